"""Run manifests: what produced a results folder, in a form that is the same on every machine.

A manifest records the parameters, the seed, the package versions, the git commit (and whether the
working tree was dirty), start and end time, wall time per step, and the SHA-256 of every input
file. Paths are stored relative to the repository root (never a machine's absolute path), so two
runs of the same thing on two machines give manifests that differ only in times.

The runner (:mod:`rftlib.book.runner`) writes one per executed notebook into ``book/results/<step>/``;
a notebook may also build its own to time its phases::

    m = build_manifest(params, seed=params["seed"], inputs={"theta_zs": "checkpoints/zs.safetensors"})
    with m.step("finetune"):
        ...
    write_manifest("book/results/finetune", m.finish())

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "w.bin").write_bytes(b"abc")
    >>> m = build_manifest({"alpha": 0.5}, seed=0, inputs={"weights": d / "w.bin"})
    >>> with m.step("work"):
    ...     pass
    >>> m["inputs"]["weights"]["sha256"][:12], m["seed"], "work" in m["steps"]
    ('ba7816bf8f01', 0, True)
    >>> path = write_manifest(d, m.finish())
    >>> manifests_match(m, read_manifest(d))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from rftlib.files.io import sha256


MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1

#: Distributions whose versions every manifest records (missing ones are recorded as ``None``).
VERSIONED_PACKAGES: tuple[str, ...] = (
    "rftlib",
    "torch",
    "torchvision",
    "open_clip_torch",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "safetensors",
    "papermill",
)

#: Keys that change on every run of the same thing: ignored when comparing manifests.
TIME_KEYS: frozenset[str] = frozenset({"started", "finished", "wall_seconds", "steps"})


#: The environment variable that points the library at a checkout other than its own.
REPO_ROOT_ENV = "RFT_REPO_ROOT"


def _checked_env_root(value: str) -> Path:
    """``$RFT_REPO_ROOT`` as a path, or a :class:`~rftlib.errors.ParameterError` naming the variable
    when it is no folder or a folder that is no checkout (neither ``pyproject.toml`` nor ``notebooks/``)."""
    from rftlib.errors import ParameterError

    p = Path(value).expanduser()
    if not p.is_dir():
        what = "a file" if p.exists() else "no such folder"
        raise ParameterError(
            f"{REPO_ROOT_ENV}={value!r} is {what}; it must name the folder of a checkout of this "
            f"project (holding pyproject.toml and notebooks/), or be unset"
        )
    if not (p / "pyproject.toml").is_file() and not (p / "notebooks").is_dir():
        raise ParameterError(
            f"{REPO_ROOT_ENV}={value!r} is not a checkout of this project (no pyproject.toml, no "
            f"notebooks/); point it at the repository root or unset it"
        )
    return p.resolve()


def repo_root() -> Path:
    """The repository root: ``$RFT_REPO_ROOT`` if set, else the checkout holding the ``rftlib`` package.

    Raises:
        ParameterError: ``$RFT_REPO_ROOT`` names no folder, or a folder that is not a checkout
            (neither ``pyproject.toml`` nor ``notebooks/``).

    Example:
        >>> (repo_root() / "rftlib").is_dir()
        True
    """
    env = os.environ.get(REPO_ROOT_ENV)
    if env:
        return _checked_env_root(env)
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").is_file():  # editable install: the checkout holding the package
        return here
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):  # installed elsewhere: the enclosing checkout of the caller
        if (d / "pyproject.toml").is_file() or (d / ".git").exists():
            return d
    return cwd


def repo_path(path: str | os.PathLike) -> Path:
    """An absolute, normalized path: ``path`` itself if absolute, else relative to the repository root
    (how every path parameter of a notebook and every results root is read).

    Example:
        >>> repo_path("book/../book/intro.md") == repo_root() / "book" / "intro.md"
        True
    """
    p = Path(path)
    return Path(os.path.abspath(p if p.is_absolute() else repo_root() / p))


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` relative to the repository root, POSIX style; outside it, ``<external>/<file name>``.

    Example:
        >>> portable_path(repo_root() / "book" / "intro.md")
        'book/intro.md'
        >>> portable_path("/somewhere/else/w.pt")
        '<external>/w.pt'
    """
    base = Path(root).resolve() if root is not None else repo_root()
    p = Path(path)
    p = (base / p) if not p.is_absolute() else p
    p = Path(os.path.abspath(p))
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return f"<external>/{p.name}"


def _portable_value(value: Any, root: Path) -> Any:
    """Replace absolute paths inside a parameter value by repository-relative ones."""
    if isinstance(value, os.PathLike):
        return portable_path(value, root)
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        return portable_path(value, root)
    if isinstance(value, Mapping):
        return {str(k): _portable_value(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable_value(v, root) for v in value]
    return value


def package_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Versions of Python and of the given distributions (``None`` where one is not installed).

    Example:
        >>> v = package_versions(["rftlib", "surely-not-installed-pkg"])
        >>> v["rftlib"], v["surely-not-installed-pkg"], v["python"].count(".")
        ('0.1.0', None, 2)
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}``; ``{"commit": "unknown", "dirty": None}`` without git.

    ``dirty`` is true when tracked files differ from the commit (untracked files are ignored, so
    results written by the run itself do not make it dirty).

    Example:
        >>> info = git_info("/")
        >>> info["commit"] == "unknown" or len(info["commit"]) == 40
        True
    """
    cwd = Path(root) if root is not None else repo_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit or "unknown", "dirty": bool(status.strip()) if commit else None}


def rftlib_source_hash() -> str:
    """SHA-256 over the sources of the installed ``rftlib`` package (file names and contents).

    Recorded in manifests so a reader can tell whether the library changed since a result was made.
    """
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*")):
        if f.is_file() and f.suffix in {".py", ".json", ".txt", ".yaml"} and "__pycache__" not in f.parts:
            h.update(f.relative_to(pkg).as_posix().encode())
            h.update(b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def _skipped_in_folder(rel: Path) -> bool:
    """Files a folder's fingerprint leaves out: hidden ones, manifests and executed notebooks, whose
    times change on every run although the data they describe does not."""
    return any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or (
        rel.name == MANIFEST_NAME or rel.suffix == ".ipynb"
    )


def hash_input(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's data files (relative names and hashes, sorted; hidden
    files, ``manifest.json`` and ``*.ipynb`` left out, so a rerun that reproduces the same data
    gives the same fingerprint).

    Raises:
        FileNotFoundError: the path does not exist (the message names it).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.csv").write_text("x"); before = hash_input(d)
        >>> _ = (d / "manifest.json").write_text("{}"); hash_input(d) == before
        True
    """

    p = Path(path)
    if p.is_file():
        return sha256(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p)
            if f.is_file() and not _skipped_in_folder(rel):
                h.update(f"{rel.as_posix()}\0{sha256(f)}\n".encode())
        return h.hexdigest()
    raise FileNotFoundError(f"input file not found: {portable_path(p)} (relative paths start at the repository root)")


def input_hashes(inputs: Mapping[str, str | os.PathLike] | None, root: str | os.PathLike | None = None) -> dict[str, dict[str, str]]:
    """``{name: {"path": repo-relative path, "sha256": hex}}`` for each named input file or folder."""
    base = Path(root).resolve() if root is not None else repo_root()
    out: dict[str, dict[str, str]] = {}
    for name, path in sorted((inputs or {}).items()):
        p = Path(path)
        p = p if p.is_absolute() else base / p
        out[str(name)] = {"path": portable_path(p, base), "sha256": hash_input(p)}
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest(dict):
    """A manifest: a plain ``dict`` (JSON-ready) with :meth:`step` timing and :meth:`finish`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._t0 = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a block; its wall seconds are added to ``self["steps"][name]`` (also on error).

        Example:
            >>> m = Manifest(steps={})
            >>> with m.step("a"):
            ...     pass
            >>> m["steps"]["a"] >= 0
            True
        """
        t = time.perf_counter()
        try:
            yield
        finally:
            steps = self.setdefault("steps", {})
            steps[name] = round(steps.get(name, 0.0) + time.perf_counter() - t, 3)

    def finish(self) -> "Manifest":
        """Set the end time and total wall seconds; returns ``self``."""
        self["finished"] = _now()
        self["wall_seconds"] = round(time.perf_counter() - self._t0, 3)
        return self


def platform_info(computes: bool = True) -> dict[str, str]:
    """The system, the machine and, when this process ``computes`` and has imported torch, the
    vector instructions torch's CPU kernels use (``cpu_capability``, e.g. ``AVX2``: floating-point
    sums, and so the low digits of results, depend on it; see :mod:`rftlib.book.schedule`).

    Example:
        >>> sorted(platform_info(computes=False))
        ['machine', 'system']
    """
    out = {"system": platform.system(), "machine": platform.machine()}
    torch = sys.modules.get("torch")  # not imported here: a manifest does not start torch
    if computes and torch is not None:
        out["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    return out


def build_manifest(
    params: Mapping[str, Any],
    seed: int | None = None,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    *,
    root: str | os.PathLike | None = None,
    computes: bool = True,
    **extra: Any,
) -> Manifest:
    """Start a manifest for a run with these parameters, seed and input files.

    Args:
        params: the run's parameters (absolute paths in values are made repository-relative).
        seed: the random seed (``None`` when the run has none).
        inputs: named input files or folders whose SHA-256 is recorded (e.g. checkpoints).
        root: the repository root (default :func:`repo_root`).
        computes: this process runs the computation (``False`` for the runner and the pipeline,
            whose kernels compute under their own instruction cap: see :func:`platform_info`).
        **extra: more top-level keys (JSON-serialisable), e.g. ``notebook={...}``.

    Example:
        >>> m = build_manifest({"out": str(repo_root() / "book/results/x")}, seed=3)
        >>> m["parameters"], m["seed"], m["git"]["commit"] != "", "torch" in m["versions"]
        ({'out': 'book/results/x'}, 3, True, True)
    """
    base = Path(root).resolve() if root is not None else repo_root()
    m = Manifest(
        schema=SCHEMA_VERSION,
        parameters=_portable_value(dict(params), base),
        seed=seed,
        inputs=input_hashes(inputs, base),
        versions=package_versions(),
        git=git_info(base),
        rftlib_source_sha256=rftlib_source_hash(),
        platform=platform_info(computes),
        started=_now(),
        finished=None,
        wall_seconds=None,
        steps={},
    )
    for k, v in extra.items():
        m[k] = _portable_value(v, base)
    return m


def write_manifest(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` as ``folder/manifest.json`` atomically (sorted keys); returns the path."""
    from rftlib.files.io import atomic_write_json

    path = Path(folder) / MANIFEST_NAME
    atomic_write_json(path, dict(manifest))
    return path


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest in ``folder`` (or the file itself), or ``None`` if absent or unreadable."""
    p = Path(folder)
    p = p / MANIFEST_NAME if p.is_dir() else p
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _normalise(m: Mapping[str, Any]) -> Any:
    # a JSON round trip makes tuples lists and keys strings, as in a manifest read back from disk
    return json.loads(json.dumps(dict(m), sort_keys=True, default=str))


def manifests_match(
    a: Mapping[str, Any] | None,
    b: Mapping[str, Any] | None,
    *,
    ignore: Iterable[str] = TIME_KEYS,
    keys: Iterable[str] | None = None,
) -> bool:
    """Whether two manifests describe the same run, ignoring times (or comparing only ``keys``).

    Example:
        >>> a = {"parameters": {"x": 1}, "started": "t0", "steps": {"s": 1.0}}
        >>> b = {"parameters": {"x": 1}, "started": "t1", "steps": {"s": 2.0}}
        >>> manifests_match(a, b), manifests_match(a, {"parameters": {"x": 2}})
        (True, False)
        >>> manifests_match(a, {"parameters": {"x": 1}, "other": 0}, keys=["parameters"])
        True
    """
    if a is None or b is None:
        return False
    na, nb = _normalise(a), _normalise(b)
    if keys is not None:
        keys = list(keys)
        return {k: na.get(k) for k in keys} == {k: nb.get(k) for k in keys}
    drop = set(ignore)
    return {k: v for k, v in na.items() if k not in drop} == {k: v for k, v in nb.items() if k not in drop}


__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "TIME_KEYS",
    "VERSIONED_PACKAGES",
    "build_manifest",
    "git_info",
    "hash_input",
    "input_hashes",
    "manifests_match",
    "package_versions",
    "platform_info",
    "portable_path",
    "read_manifest",
    "repo_root",
    "rftlib_source_hash",
    "write_manifest",
]
