"""The book builds strictly (zero warnings), works offline, and renders in a real browser.

The build goes to a temporary folder (``jupyter-book build . --path-output TMP -W -n --keep-going``),
so a developer's ``_build`` is left alone. The browser tests drive Debian's headless Chromium through
the DevTools protocol over a pipe (``--remote-debugging-pipe``: no extra Python package, no port):
every page of the table of contents must load every image (``naturalWidth > 0``), typeset its math
with the local MathJax, and request nothing from the network; the claims page must show the claims
table. Screenshots are saved to ``_build/screenshots/`` at the repository root.

Claims table contract: the findings page ``book/findings/claims.md`` renders the claims matrix
generated from the steps' ``claims.csv`` (:func:`rftlib.book.claims.claims_matrix_html`) as a
``<table>`` with id ``claims-table``: one row per claim, one column per world, every cell of class
``verdict`` with a ``verdict-<verdict>`` class. (The fast test of the generated HTML is
``tests/test_claims_matrix.py``.)
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from rftlib.cli import book_command
from rftlib.book.mathjax import MATHJAX_ENTRY
from rftlib.book.mathjax import ensure as fetch_mathjax
from rftlib.files.manifest import repo_root

pytestmark = [pytest.mark.book, pytest.mark.slow]

ROOT = repo_root()
CLAIMS_PAGE = "book/findings/claims"
CLAIMS_SELECTOR = "table#claims-table, #claims-table table, .rft-claims table, table.rft-claims"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]


def toc_pages() -> list[str]:
    """Every page named in ``_toc.yml`` (root, chapters, sections), without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                pages.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [re.sub(r"\.(md|ipynb)$", "", p) for p in pages]


@pytest.fixture(scope="module")
def built_book():
    """Build the book strictly into a temporary folder; yields (html folder, build log)."""
    try:
        fetch_mathjax()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"MathJax could not be put into book/_static/mathjax ({e}); run `rft mathjax`")
    from rftlib.book.pages import render_pages

    render_pages()
    with tempfile.TemporaryDirectory(prefix="rft-book-") as tmp:
        cmd = book_command(strict=True, path_output=tmp)
        env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
        log = proc.stdout + proc.stderr
        yield Path(tmp) / "_build" / "html", proc.returncode, log


def test_book_builds_with_zero_warnings(built_book):
    html, rc, log = built_book
    warnings = [ln for ln in log.splitlines() if re.search(r"WARNING|ERROR|CRITICAL", ln)]
    assert rc == 0 and not warnings, f"strict build failed (exit {rc}):\n" + "\n".join(warnings or log.splitlines()[-40:])
    assert "build succeeded" in log
    for page in toc_pages():
        assert (html / f"{page}.html").is_file(), page


def test_book_needs_no_network(built_book):
    html, rc, _ = built_book
    assert rc == 0
    assert (html / "_static" / "mathjax" / MATHJAX_ENTRY).is_file()
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//[^"']+""", re.I)
    for page in toc_pages():
        text = (html / f"{page}.html").read_text(encoding="utf-8")
        found = [m.group(0) for m in remote.finditer(text) if "rel=\"canonical\"" not in m.group(0)]
        found = [f for f in found if not re.search(r"<link[^>]*rel=[\"'](?:canonical|author|license)", f)]
        assert not found, f"{page} loads from the network: {found[:3]}"
        if "class=\"math" in text:
            assert "_static/mathjax/tex-mml-chtml.js" in text, f"{page} has math but no local MathJax"


# ------------------------------------------------------------------------------------------------
# A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe (fd 3 in, fd 4 out).


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """Headless Chromium driven through the DevTools protocol over a pipe."""

    def __init__(self, timeout: float = 60.0) -> None:
        exe = _chromium()
        assert exe
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="rft-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()

        def wire() -> None:  # in the child: the protocol's fixed descriptors
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(3, 4), preexec_fn=wire,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe: " + self.proc.stderr.read().decode()[-2000:])
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                           "returnByValue": True}, session=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


PAGE_CHECK = """
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  window.scrollTo(0, document.body.scrollHeight);
  await Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  window.scrollTo(0, 0);
  return {
    images: imgs.map(i => ({src: (i.currentSrc || i.src).slice(0, 120), width: i.naturalWidth})),
    mathSource: document.querySelectorAll('.math, .amsmath').length,
    mathTypeset: document.querySelectorAll('mjx-container').length,
    title: document.title,
  };
})()
"""

CLAIMS_CHECK = """
(() => {
  const t = document.querySelector(%s);
  if (!t) return null;
  const head = Array.from(t.querySelectorAll('thead th')).map(th => th.textContent.trim().toLowerCase());
  const rows = Array.from(t.querySelectorAll('tbody tr'));
  const cells = rows.map(r => r.querySelectorAll('td').length);
  const coloured = rows.map(r => Array.from(r.querySelectorAll('td')).filter(
      td => Array.from(td.classList).some(c => c.startsWith('verdict-'))).length);
  const bg = Array.from(t.querySelectorAll('td.verdict-supported, td.verdict-not-supported, td.verdict-mixed, td.verdict-untestable'))
      .map(td => getComputedStyle(td).backgroundColor);
  return {header: head, rows: rows.length, claims: rows.map(r => r.dataset.claim), cells, coloured, bg};
})()
""" % json.dumps(CLAIMS_SELECTOR)


@pytest.fixture(scope="module")
def browser(built_book):
    if _chromium() is None:
        msg = "Chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must install it")
        pytest.skip(msg)
    b = Browser()
    yield b
    b.close()


@pytest.mark.browser
def test_pages_render_offline_in_chromium(built_book, browser):
    html, rc, _ = built_book
    assert rc == 0
    problems = []
    for page in toc_pages():
        browser.open((html / f"{page}.html").as_uri())
        state = browser.evaluate(PAGE_CHECK)
        broken = [i["src"] for i in state["images"] if i["width"] == 0]
        if broken:
            problems.append(f"{page}: images not loaded: {broken}")
        if state["mathSource"] and not state["mathTypeset"]:
            problems.append(f"{page}: math was not typeset (MathJax missing?)")
        remote = [u for u in browser.requested_urls() if not u.startswith(("file:", "data:", "blob:", "about:"))]
        if remote:
            problems.append(f"{page}: requested from the network: {remote[:3]}")
        browser.screenshot(SCREENSHOTS / f"{page.replace('/', '__')}.png")
    assert not problems, "\n".join(problems)


@pytest.mark.browser
def test_intro_math_is_typeset_by_local_mathjax(built_book, browser):
    html, rc, _ = built_book
    browser.open((html / "book" / "intro.html").as_uri())
    state = browser.evaluate(PAGE_CHECK)
    assert state["mathSource"] > 0 and state["mathTypeset"] >= state["mathSource"]
    assert any("_static/mathjax/" in u for u in browser.requested_urls())


@pytest.mark.browser
def test_claims_table_is_rendered(built_book, browser):
    html, rc, _ = built_book
    if CLAIMS_PAGE not in toc_pages():
        pytest.skip(f"{CLAIMS_PAGE}.md is not in _toc.yml yet")
    browser.open((html / f"{CLAIMS_PAGE}.html").as_uri())
    table = browser.evaluate(CLAIMS_CHECK)
    browser.screenshot(SCREENSHOTS / "claims.png")
    assert table is not None, f"no element matching {CLAIMS_SELECTOR!r} on the claims page"
    from rftlib.book.claims import read_claims

    claims = read_claims(ROOT / "book" / "results")
    worlds = claims["world"].nunique()
    assert table["header"][0] == "paper claim" and len(table["header"]) == 1 + worlds, table
    assert table["claims"] == list(dict.fromkeys(claims["claim"])), table  # one row per claim, in order
    assert all(n == worlds for n in table["cells"]) and table["coloured"] == table["cells"], table
    assert all(c not in ("", "rgba(0, 0, 0, 0)") for c in table["bg"]), table  # the stylesheet colours them
