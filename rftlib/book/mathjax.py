"""MathJax served by the book itself, so that its math renders with no network.

Sphinx loads MathJax from a CDN by default. The book instead points ``mathjax_path`` (in
``_config.yml``) at ``mathjax/tex-mml-chtml.js`` under its static folder ``book/_static``; this module
puts MathJax there: the pinned npm package ``mathjax@3.2.2`` is fetched with ``npm pack`` (npm's
cache is reused when offline), or read from ``$RFT_MATHJAX_TARBALL`` (a ``mathjax-3.2.2.tgz`` copied
by hand), its SHA-256 is checked, and its ``es5`` folder (about 24 MB, ignored by git) is copied.

Set-up step (idempotent)::

    rft mathjax            # rft mathjax --status: installed or missing

Example:
    >>> MATHJAX_VERSION, MATHJAX_DIR.as_posix(), MATHJAX_ENTRY
    ('3.2.2', 'book/_static/mathjax', 'tex-mml-chtml.js')
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from rftlib.errors import RftError

MATHJAX_VERSION = "3.2.2"
MATHJAX_TARBALL_SHA256 = "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09"
MATHJAX_DIR = Path("book") / "_static" / "mathjax"
MATHJAX_ENTRY = "tex-mml-chtml.js"


def mathjax_dir() -> Path:
    """The folder the book serves MathJax from: ``<repo>/book/_static/mathjax``."""
    from rftlib.files.manifest import repo_root

    return repo_root() / MATHJAX_DIR


def is_installed(dest: str | os.PathLike | None = None) -> bool:
    """Whether MathJax's entry script is in place."""
    return (Path(dest) if dest is not None else mathjax_dir()).joinpath(MATHJAX_ENTRY).is_file()


def _npm_pack(folder: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise RftError(
            "npm is not installed, so MathJax cannot be fetched: install Node.js and npm "
            f"(Debian: apt-get install -y npm), or set RFT_MATHJAX_TARBALL to a mathjax-{MATHJAX_VERSION}.tgz"
        )
    proc = subprocess.run(
        [npm, "pack", f"mathjax@{MATHJAX_VERSION}", "--pack-destination", str(folder), "--silent"],
        capture_output=True, text=True, timeout=600,
    )
    tgz = folder / f"mathjax-{MATHJAX_VERSION}.tgz"
    if proc.returncode != 0 or not tgz.is_file():
        raise RftError(f"`npm pack mathjax@{MATHJAX_VERSION}` failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return tgz


def ensure(dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Put MathJax into ``dest`` (default :func:`mathjax_dir`) unless it is there; return the folder.

    Raises:
        RftError: npm is missing or fails, or the package's checksum is not the pinned one.
    """
    target = Path(dest) if dest is not None else mathjax_dir()
    if is_installed(target) and not force:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        local = os.environ.get("RFT_MATHJAX_TARBALL")
        tgz = Path(local) if local else _npm_pack(Path(tmp))
        digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
        if digest != MATHJAX_TARBALL_SHA256:
            raise RftError(
                f"{tgz.name} has sha256 {digest}, expected {MATHJAX_TARBALL_SHA256} (mathjax {MATHJAX_VERSION})"
            )
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/es5/")]
            tar.extractall(staging, members=members, filter="data")
        new = target.parent / f".{target.name}.new"
        if new.exists():
            shutil.rmtree(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging / "package" / "es5", new)
        if target.exists():
            shutil.rmtree(target)
        os.replace(new, target)
    return target
