"""Notebook parameters: read them, load parameter files, apply overrides, validate before running.

A notebook declares its parameters in one cell tagged ``parameters`` (papermill's convention):
literals only, one per line, each with a trailing comment (without ``=``, which papermill's reader
cannot take) giving its meaning::

    world = "fashion"  # str: which miniature world
    layers = [0, 1]  # list[int]: layers to interpolate

A study notebook's parameters are those of its step's parameter object (:data:`rftlib.steps.STEPS`,
keyed by the notebook's file name stem), which is their only validation: names with "did you mean",
types, ranges and the rules between parameters (:mod:`rftlib.steps.parameters`). Any other notebook
gets its names checked and each value against the type of its default (an ``int`` is a ``float``).

Parameter files live in ``notebooks/params/<name>.yaml``. Three forms, told apart by their keys:

* **flat** (no ``parameters``/``steps`` key): the whole mapping is the parameters of one notebook;
* **one step** (a ``parameters`` key): ``notebook``, ``parameters``, and optionally ``inputs``
  (named files whose SHA-256 enters the manifest and the cache key), ``validate``
  (``"module:function"`` called with the parameters), ``timeout`` (seconds per cell),
  ``description``, ``name``;
* **pipeline** (a ``steps`` key): ``description``, ``defaults`` (given to every step whose notebook
  declares that parameter), ``results_root`` (the folder, inside the repository, that holds the
  pipeline's step folders ``<results_root>/<step>/`` and its ``pipeline/timings.csv``; default
  ``book/results``, the book's) and ``steps``, a list of one-step mappings, run in order::

    description: Quick run of the whole study on one world
    results_root: book/results-quick
    defaults:
      seed: 0
    steps:
      - name: pretrain
        notebook: notebooks/pretrain.ipynb
        parameters: {world: fashion, epochs: 2}
      - name: finetune
        notebook: notebooks/finetune.ipynb
        parameters: {epochs: 1}
        inputs: {theta_zs: book/results-quick/pretrain/theta_zs.safetensors}
        validate: mypackage.checks:check_finetune

A study step's results folders left empty (``interpolate_dir``, ``stragglers_dir``, ...: the
``<step>_dir`` fields of its parameter class) are resolved against the pipeline's results root,
``<results_root>/<world>-<step>`` (:meth:`ParamFile.parameters_for`); its own results folder is
``<results_root>/<step name>`` (:mod:`rftlib.book.pipeline`).

Values are YAML 1.2 scalars: ``1e-3`` is a float and only ``true``/``false`` are booleans.

Example:
    >>> parse_override("lr=1e-3"), parse_override("layers=[1, 2]"), parse_override("name=no")
    (('lr', 0.001), ('layers', [1, 2]), ('name', 'no'))
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import yaml

from rftlib.errors import ParameterError, RftError
from rftlib.files.layout import PARAMS_DIR, RESULTS_ROOT
from rftlib.files.manifest import portable_path, repo_root

if TYPE_CHECKING:
    from rftlib.steps.parameters import StepParams

DEFAULT_RESULTS_ROOT = RESULTS_ROOT

# ---------------------------------------------------------------------------------------------
# YAML with YAML 1.2 scalars (PyYAML follows 1.1: "1e-3" is a string there and "no" is False)


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-3``) and booleans (only true/false)."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text with YAML 1.2 scalars.

    Example:
        >>> yaml_load("a: 1e-3\\nb: yes\\nc: true")
        {'a': 0.001, 'b': 'yes', 'c': True}
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


# ---------------------------------------------------------------------------------------------
# A notebook's parameters


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its name, default value, type and what it means."""

    name: str
    default: Any
    type: str = "any"
    help: str = ""


def step_class(notebook: str | os.PathLike) -> type[StepParams] | None:
    """The parameter class of a study notebook (:data:`rftlib.steps.STEPS`, by file name stem), or ``None``.

    Example:
        >>> step_class("notebooks/sharpness.ipynb").__module__, step_class("tests/fixtures/dummy.ipynb")
        ('rftlib.steps.sharpness', None)
    """
    from rftlib.steps import STEPS

    return STEPS.get(Path(notebook).stem)


def _literal(name: str, text: str, where: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError) as e:
        raise ParameterError(
            f"{where}: the value of {name!r} is not a literal ({text!r}); parameters must be literals, "
            "derived values belong in a later cell"
        ) from e


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, ParamSpec]:
    """The parameters a notebook declares in its ``parameters`` cell (papermill's parameter inference, as :func:`papermill.inspect_notebook`;
    empty if it has none), typed and documented by its step's parameter class where it has one.

    Example:
        >>> specs = notebook_parameters("notebooks/sharpness.ipynb")
        >>> specs["rhos"].type, specs["rhos"].default
        ('list[float]', [0.004])
    """
    path = resolve_path(notebook, kind="notebook")
    where = portable_path(path)
    try:
        import nbformat
        from papermill.inspection import _infer_parameters

        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:  # papermill's reader expects every cell to carry tags
            cell.metadata.setdefault("tags", [])
        kernel = nb.metadata.get("kernelspec", {}).get("name") or "python3"  # a notebook without one is Python
        found = {p.name: {"default": p.default, "help": p.help} for p in _infer_parameters(nb, name=kernel, language="python")}
    except Exception as e:  # noqa: BLE001 - nbformat and papermill raise several types
        raise ParameterError(f"cannot read notebook {where}: {e}") from e
    cls = step_class(path)
    fields = {f.name: f for f in dataclasses.fields(cls)} if cls is not None else {}
    specs = {}
    for name, info in found.items():
        default = _literal(name, info["default"], where)
        f = fields.get(name)
        kind = str(f.type) if f is not None else type(default).__name__ if default is not None else "any"
        doc = f.metadata.get("doc", "") if f is not None else info.get("help", "")
        specs[name] = ParamSpec(name, default, kind, doc)
    return specs


def format_parameters(notebook: str | os.PathLike) -> str:
    """A table of a notebook's parameters: name, type, default and meaning (for ``rft params``)."""
    specs = notebook_parameters(notebook)
    if not specs:
        return f"{portable_path(resolve_path(notebook))} has no cell tagged 'parameters'."
    rows = [(s.name, s.type, repr(s.default), s.help) for s in specs.values()]
    head = ("name", "type", "default", "meaning")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*r).rstrip() for r in [head, *rows])


# ---------------------------------------------------------------------------------------------
# Overrides and validation


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is a YAML 1.2 scalar or flow collection (``x=`` gives None).

    Raises:
        ParameterError: no ``=``, or an empty or invalid name.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ParameterError(f"bad override {text!r}: write NAME=VALUE, e.g. alpha=0.5 or layers=[0,1]")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ParameterError(f"bad value in override {text!r}: not a YAML value ({str(e).splitlines()[0]})") from e
    return key, value


def apply_overrides(params: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """``params`` updated with ``key=value`` strings (or a mapping); later ones win.

    Example:
        >>> apply_overrides({"a": 1, "b": 2}, ["b=3", "c=x"])
        {'a': 1, 'b': 3, 'c': 'x'}
    """
    out = dict(params)
    items = overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides)
    for k, v in items:
        out[k] = v
    return out


def load_check(spec: str | Callable[[dict], Any]) -> Callable[[dict], Any]:
    """A check function from ``"package.module:function"`` (or the callable itself)."""
    if callable(spec):
        return spec
    module, sep, func = str(spec).partition(":")
    if not sep or not module or not func:
        raise ParameterError(f"bad validate hook {spec!r}: write 'package.module:function'")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ParameterError(f"validate hook {spec!r} cannot be loaded: {e}") from e


def _check_plain(specs: Mapping[str, ParamSpec], params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Names, and each value against its default's type, for a notebook without a parameter class."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    allowed = ", ".join(specs) or "(none: the notebook has no parameters cell)"
    for name, value in params.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(specs), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown parameter {name!r} for {where}{hint}; allowed: {allowed}")
            continue
        kind = spec.type
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = {"int": isinstance(value, int) and not isinstance(value, bool), "float": number,
              "bool": isinstance(value, bool), "str": isinstance(value, str),
              "list": isinstance(value, (list, tuple)), "dict": isinstance(value, Mapping)}.get(kind, True)
        if not ok:
            problems.append(f"parameter {name!r} must be {kind}, got {type(value).__name__} {value!r}")
            continue
        out[name] = float(value) if kind == "float" else list(value) if kind == "list" else value
    if problems:
        raise ParameterError("; ".join(problems))
    return out


def _checked(notebook: Path, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The given parameters checked (and the results folders resolved), and the full parameter dict."""
    cls = step_class(notebook)
    if cls is None:
        specs = notebook_parameters(notebook)
        out = _check_plain(specs, params, portable_path(notebook))
        return out, {**{k: s.default for k, s in specs.items()}, **out}
    obj = cls.from_mapping(params)
    full = obj.to_dict()
    defaults = cls.defaults()
    resolved = {k for k, v in defaults.items() if k.endswith("_dir") and v == "" and k not in params}
    return {k: full[k] for k in [*params, *sorted(resolved)]}, full


def declared_files(notebook: str | os.PathLike, checked: Mapping[str, Any]) -> tuple[dict[str, Path], list[Path]]:
    """What a study step declares beyond its path parameters, from its validated parameters
    (:func:`validate_params`): the inputs it reads (its world's file and checkpoint) and the files it writes
    outside its results folder (:meth:`rftlib.steps.parameters.StepParams.inputs`, ``outputs``).
    Other notebooks declare nothing.

    Example:
        >>> inputs, outputs = declared_files("notebooks/zeroshot.ipynb", {"world": "digits"})
        >>> sorted(inputs), outputs, declared_files("tests/fixtures/dummy.ipynb", {})
        (['theta_zs', 'world'], [], ({}, []))
    """
    cls = step_class(notebook)
    if cls is None:
        return {}, []
    obj = cls.from_mapping(checked)
    return obj.inputs(), obj.outputs()


def resolved_dirs(cls: type[StepParams], params: Mapping[str, Any], root: str = DEFAULT_RESULTS_ROOT,
                  skip: Sequence[str] = ("out_dir",)) -> dict[str, str]:
    """The results folders that a step's parameter class fills in for the ``*_dir`` fields left
    empty in ``params`` (but ``skip``), under the results root ``root``: the class's own rule
    (``book/results/<world>-<step>``, :class:`rftlib.steps.parameters.StepParams`) with its root
    replaced by ``root``.

    Example:
        >>> from rftlib.steps import STEPS
        >>> resolved_dirs(STEPS["sparsity"], {"world": "digits"}, "book/results-quick")
        {'interpolate_dir': 'book/results-quick/digits-interpolate', 'stragglers_dir': 'book/results-quick/digits-stragglers'}
        >>> resolved_dirs(STEPS["sparsity"], {"world": "digits", "interpolate_dir": "x"}, "r")
        {'stragglers_dir': 'r/digits-stragglers'}
    """
    defaults = cls.defaults()
    empty = [k for k, v in defaults.items()
             if k.endswith("_dir") and v == "" and k not in params and k not in skip]
    if not empty:
        return {}
    probe = object.__new__(cls)  # the class's rule on the defaults and the given world, unchecked
    for k, v in defaults.items():
        object.__setattr__(probe, k, params.get(k, v) if k == "world" else v)
    probe._resolve_dirs()
    out = {}
    for k in empty:
        value = PurePosixPath(str(getattr(probe, k)))
        base = PurePosixPath(DEFAULT_RESULTS_ROOT)
        out[k] = str(PurePosixPath(root) / value.relative_to(base)) if value.is_relative_to(base) else str(value)
    return out


def check_results_root(value: Any, what: str = "results_root") -> str:
    """A results root as a repository-relative POSIX path, once sure it is a folder inside the
    repository (relative paths start at the repository root; the book serves its figures from the
    project, so a root elsewhere could not be shown).

    Raises:
        ParameterError: not a path string, outside the repository, or the repository itself.

    Example:
        >>> check_results_root("book/results-quick/"), check_results_root("book/results")
        ('book/results-quick', 'book/results')
        >>> check_results_root("../elsewhere")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: results_root='../elsewhere' lies outside the repository; ...
    """
    example = "e.g. book/results-quick"
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ParameterError(f"{what}={value!r} is not a folder path; allowed: a folder inside the repository ({example})")
    root = repo_root()
    p = Path(value)
    full = Path(os.path.normpath(p if p.is_absolute() else root / p))
    if full == root:
        raise ParameterError(f"{what}={str(value)!r} is the repository itself; allowed: a folder inside it ({example})")
    if root not in full.parents:
        raise ParameterError(
            f"{what}={str(value)!r} lies outside the repository; allowed: a folder inside it ({example}), "
            "as the book serves its figures from the project")
    return full.relative_to(root).as_posix()


def validate_params(
    notebook: str | os.PathLike,
    params: Mapping[str, Any],
    extra_checks: str | Callable[[dict], Any] | Sequence[str | Callable[[dict], Any]] | None = None,
) -> dict[str, Any]:
    """Validate ``params`` for ``notebook`` before running it; return them in canonical form.

    A study notebook's parameters build its step's parameter object (:data:`rftlib.steps.STEPS`),
    the only validation: names, types, ranges and the rules between parameters. The results folders
    left empty come back resolved (``book/results/<world>-<step>``). Other notebooks get their names
    checked, and each value against its default's type. Then ``extra_checks`` (callables or
    ``"module:function"`` names) are called with the full parameter dict; a check signals a bad
    value by raising ``ValueError``.

    Raises:
        ParameterError: an unknown name, a wrong type or value, or a failed check.

    Example:
        >>> validate_params("notebooks/stragglers.ipynb", {"k": 2, "world": "digits"})
        {'k': 2, 'world': 'digits', 'interpolate_dir': 'book/results/digits-interpolate', 'out_dir': 'book/results/digits-stragglers'}
    """
    src = resolve_path(notebook, kind="notebook")
    out, full = _checked(src, params)
    checks: list[Any] = []
    if extra_checks is not None:
        checks.extend(extra_checks if isinstance(extra_checks, (list, tuple)) else [extra_checks])
    for check in checks:
        fn = load_check(check)
        try:
            fn(dict(full))
        except ParameterError:
            raise
        except (ValueError, TypeError) as e:
            raise ParameterError(
                f"parameters for {portable_path(src)} rejected by {getattr(fn, '__name__', fn)}: {e}") from e
    return out


# ---------------------------------------------------------------------------------------------
# Parameter files


STEP_KEYS = frozenset({"name", "notebook", "parameters", "inputs", "validate", "timeout", "description"})
PIPELINE_KEYS = frozenset({"description", "defaults", "results_root", "steps"})


@dataclass
class Step:
    """One notebook run: a name, the notebook, its parameters and optional inputs/check/timeout."""

    name: str
    notebook: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    validate: str | None = None
    timeout: float | None = None
    description: str = ""


@dataclass
class ParamFile:
    """A loaded parameter file: its steps (one for flat and one-step files), pipeline defaults and
    the results root its steps write into (repository-relative, as :func:`check_results_root` gives it)."""

    path: Path
    steps: list[Step]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    is_pipeline: bool = False
    results_root: str = DEFAULT_RESULTS_ROOT

    @property
    def name(self) -> str:
        return self.path.stem

    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def get_step(self, name: str) -> Step:
        """The step called ``name``; unknown names raise :class:`ParameterError` with close matches."""
        for s in self.steps:
            if s.name == name:
                return s
        close = difflib.get_close_matches(name, self.step_names(), n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ParameterError(
            f"no step {name!r} in {portable_path(self.path)}{hint}; steps: {', '.join(self.step_names())}"
        )

    def step_for(self, notebook: str | os.PathLike, step: str | None = None) -> Step:
        """The step that runs ``notebook`` (by path, or by file name), or the one named ``step``."""
        if step is not None:
            chosen = self.get_step(step)
            if chosen.notebook and not _same_notebook(chosen.notebook, notebook):
                raise ParameterError(
                    f"step {step!r} of {portable_path(self.path)} runs {chosen.notebook}, not {portable_path(resolve_path(notebook))}"
                )
            return chosen
        matches = [s for s in self.steps if s.notebook is None or _same_notebook(s.notebook, notebook)]
        if len(matches) == 1:
            return matches[0]
        nb = portable_path(resolve_path(notebook))
        if not matches:
            listed = ", ".join(f"{s.name} ({s.notebook})" for s in self.steps)
            raise ParameterError(f"{portable_path(self.path)} has no parameters for {nb}; it describes: {listed}")
        raise ParameterError(
            f"{portable_path(self.path)} runs {nb} in several steps ({', '.join(s.name for s in matches)}); "
            "choose one with --step NAME"
        )

    def parameters_for(self, step: Step, specs: Mapping[str, ParamSpec] | None = None) -> dict[str, Any]:
        """The step's parameters over the pipeline defaults that its notebook declares, with the
        results folders it leaves empty resolved against :attr:`results_root` (see :meth:`root_dirs`)."""
        if specs is None:
            specs = notebook_parameters(step.notebook) if step.notebook else {}
        defaults = {k: v for k, v in self.defaults.items() if k in specs}
        given = {**defaults, **step.parameters}
        return {**given, **self.root_dirs(step, given)}

    def root_dirs(self, step: Step, given: Mapping[str, Any]) -> dict[str, str]:
        """The upstream results folders (``<step>_dir`` fields but ``out_dir``, which the pipeline
        sets) that a study step of a pipeline leaves empty, under :attr:`results_root`.

        Empty under the default root, where the step's parameter class resolves them to the same
        folders itself: its parameters, cache keys and executed notebooks stay as they were.
        """
        if not self.is_pipeline or self.results_root == DEFAULT_RESULTS_ROOT or not step.notebook:
            return {}
        cls = step_class(step.notebook)
        return resolved_dirs(cls, given, self.results_root) if cls is not None else {}


def _same_notebook(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return resolve_path(a) == resolve_path(b)
    except ParameterError:
        return Path(a).stem == Path(b).stem


def resolve_path(path: str | os.PathLike, kind: str = "file") -> Path:
    """An absolute path: as given if absolute, else relative to the current folder if it exists
    there, else relative to the repository root. ``kind="notebook"`` requires an existing file."""
    p = Path(path)
    if not p.is_absolute():
        here = Path.cwd() / p
        p = here if here.exists() else repo_root() / p
    p = Path(os.path.abspath(p))
    if kind == "notebook" and not p.is_file():
        raise ParameterError(f"notebook not found: {path} (relative paths start at the repository root)")
    return p


def find_param_file(name: str | os.PathLike, params_dir: str | os.PathLike | None = None) -> Path:
    """The parameter file called ``name``: an existing path, or ``notebooks/params/<name>.yaml``.

    Raises:
        ParameterError: no such file; lists the available names with close matches.
    """
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        for cand in (p, Path.cwd() / p, repo_root() / p):
            if cand.is_file():
                return Path(os.path.abspath(cand))
    folder = Path(params_dir) if params_dir is not None else repo_root() / PARAMS_DIR
    for suffix in (".yaml", ".yml"):
        cand = folder / f"{p.stem if p.suffix in ('.yaml', '.yml') else name}{suffix}"
        if cand.is_file():
            return cand
    available = sorted(f.stem for f in folder.glob("*.y*ml")) if folder.is_dir() else []
    close = difflib.get_close_matches(str(p.stem), available, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise ParameterError(
        f"parameter file {str(name)!r} not found in {portable_path(folder)}{hint}; "
        f"available: {', '.join(available) or '(none)'}"
    )


def _as_mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ParameterError(f"{what} must be a mapping (name: value), got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _step_from(d: Mapping[str, Any], where: str, default_name: str) -> Step:
    unknown = sorted(set(d) - STEP_KEYS)
    if unknown:
        raise ParameterError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; a step has "
            f"{', '.join(sorted(STEP_KEYS))} (parameters go under 'parameters:')"
        )
    nb = d.get("notebook")
    if nb is not None and not isinstance(nb, str):
        raise ParameterError(f"{where}: 'notebook' must be a path string, got {nb!r}")
    name = d.get("name") or (Path(nb).stem if nb else default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ParameterError(f"{where}: step name {name!r} must be letters, digits, '_', '-' or '.'")
    timeout = d.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ParameterError(f"{where}: 'timeout' must be a positive number of seconds, got {timeout!r}")
    validate = d.get("validate")
    if validate is not None and not isinstance(validate, str):
        raise ParameterError(f"{where}: 'validate' must be 'module:function', got {validate!r}")
    inputs = _as_mapping(d.get("inputs"), f"{where}: 'inputs'")
    return Step(
        name=name,
        notebook=nb,
        parameters=_as_mapping(d.get("parameters"), f"{where}: 'parameters'"),
        inputs={k: str(v) for k, v in inputs.items()},
        validate=validate,
        timeout=float(timeout) if timeout is not None else None,
        description=str(d.get("description") or ""),
    )


def load_param_file(name: str | os.PathLike, params_dir: str | os.PathLike | None = None) -> ParamFile:
    """Load a parameter file (flat, one-step or pipeline form; see the module docstring).

    Raises:
        ParameterError: the file is missing, not YAML, or not in one of the three forms.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "quick.yaml").write_text("defaults: {seed: 0}\\nsteps:\\n  - notebook: a.ipynb\\n    parameters: {n: 2}\\n")
        >>> pf = load_param_file("quick", params_dir=d)
        >>> pf.is_pipeline, pf.step_names(), pf.steps[0].parameters
        (True, ['a'], {'n': 2})
    """
    path = find_param_file(name, params_dir)
    where = portable_path(path)
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParameterError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from e
    data = _as_mapping(data, where)
    if "steps" in data:
        unknown = sorted(set(data) - PIPELINE_KEYS)
        if unknown:
            raise ParameterError(
                f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))} in a pipeline file; "
                f"allowed: {', '.join(sorted(PIPELINE_KEYS))}"
            )
        raw_steps = data["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ParameterError(f"{where}: 'steps' must be a non-empty list of steps")
        steps = []
        for i, s in enumerate(raw_steps):
            if not isinstance(s, Mapping):
                raise ParameterError(f"{where}: step {i + 1} must be a mapping with 'notebook' and 'parameters'")
            step = _step_from(s, f"{where}, step {i + 1}", default_name=f"step{i + 1}")
            if step.notebook is None:
                raise ParameterError(f"{where}, step {i + 1}: every pipeline step needs 'notebook'")
            steps.append(step)
        names = [s.name for s in steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ParameterError(f"{where}: duplicate step name(s) {', '.join(dupes)}; give each step a 'name'")
        return ParamFile(
            path=path, steps=steps, defaults=_as_mapping(data.get("defaults"), f"{where}: 'defaults'"),
            description=str(data.get("description") or ""), is_pipeline=True,
            results_root=check_results_root(data.get("results_root", DEFAULT_RESULTS_ROOT), f"{where}: results_root"),
        )
    if "parameters" in data:
        return ParamFile(path=path, steps=[_step_from(data, where, default_name=path.stem)],
                         description=str(data.get("description") or ""))
    return ParamFile(path=path, steps=[Step(name=path.stem, notebook=None, parameters=data)])


def world_pipeline(world: str, template: str | os.PathLike = "default") -> ParamFile:
    """The steps of pipeline ``template`` for ``world`` alone: the steps of the template's first world,
    with that world's name replaced by ``world`` in the steps' names and ``world`` parameters, and each
    ``*_dir`` parameter that names one of those steps' folders renamed to the new step's folder.

    Example:
        >>> pf = world_pipeline("mine", "quick")
        >>> pf.step_names()[:2], pf.parameters_for(pf.get_step("mine-sharpness"))["stragglers_dir"]
        (['mine-zeroshot', 'mine-finetune'], 'book/results-quick/mine-stragglers')
    """
    pf = load_param_file(template)
    worlds = list(dict.fromkeys(s.parameters["world"] for s in pf.steps if "world" in s.parameters))
    if not pf.is_pipeline or not worlds:
        raise ParameterError(f"{portable_path(pf.path)} is not a pipeline whose steps name a 'world'; "
                             "use a study pipeline such as default or quick")
    first = _model_world(world, worlds)
    steps = [s for s in pf.steps if s.parameters.get("world") == first]
    names = {s.name: (world + s.name[len(str(first)):] if s.name.startswith(f"{first}-") else f"{world}-{s.name}")
             for s in steps}

    def renamed(key: str, value: Any) -> Any:
        if key == "world":
            return world
        if key.endswith("_dir") and isinstance(value, str) and Path(value).name in names:
            return (Path(value).parent / names[Path(value).name]).as_posix()
        return value

    new = [dataclasses.replace(s, name=names[s.name], parameters={k: renamed(k, v) for k, v in s.parameters.items()})
           for s in steps]
    return dataclasses.replace(pf, steps=new, defaults=dict(pf.defaults),
                               description=f"{pf.description} (world {world} alone, from the steps of {first})")


def _model_world(world: str, worlds: Sequence[str]) -> str:
    """The template world whose steps (grid, sizes) a new world takes: the first one on the same data
    set (a world made ``--from digits`` gets digits' grid), else the template's first world."""
    from rftlib.worlds.world import load_world

    try:
        dataset = load_world(world).dataset
    except RftError:  # not (yet) a loadable world: its own checks report that when the steps are checked
        return str(worlds[0])
    for w in worlds:
        try:
            if load_world(str(w)).dataset == dataset:
                return str(w)
        except RftError:
            continue
    return str(worlds[0])


__all__ = [
    "DEFAULT_RESULTS_ROOT",
    "ParamFile",
    "ParamSpec",
    "Step",
    "apply_overrides",
    "check_results_root",
    "declared_files",
    "find_param_file",
    "format_parameters",
    "load_check",
    "load_param_file",
    "notebook_parameters",
    "parse_override",
    "resolve_path",
    "resolved_dirs",
    "step_class",
    "validate_params",
    "world_pipeline",
    "yaml_load",
]
