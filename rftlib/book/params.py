"""Notebook parameters: read them, load parameter files, apply overrides, validate before running.

A notebook declares its parameters in one cell tagged ``parameters`` (papermill's convention):
literals only, one per line, each with a trailing comment giving its meaning::

    world = "fashion"      # str: which miniature world
    alpha = 0.5            # float: interpolation coefficient, 0 = zero-shot, 1 = fine-tuned
    layers = [0, 1]        # list[int]: layers to interpolate
    budget: int | None = None  # optional annotation: types a None default

The parameter's type is its annotation where there is one, else the type its comment declares
before a colon (``list[str]: ...``, ``int or None: ...``) when that admits the default, else the
default's own type. An ``int`` is accepted for a ``float``; a list's elements are checked against the
element type; a ``None`` default without a declared type accepts anything.

Parameter files live in ``notebooks/params/<name>.yaml``. Three forms, told apart by their keys:

* **flat** (no ``parameters``/``steps`` key): the whole mapping is the parameters of one notebook;
* **one step** (a ``parameters`` key): ``notebook``, ``parameters``, and optionally ``inputs``
  (named files whose SHA-256 enters the manifest and the cache key), ``validate``
  (``"module:function"`` called with the parameters), ``timeout`` (seconds per cell),
  ``description``, ``name``;
* **pipeline** (a ``steps`` key): ``description``, ``defaults`` (given to every step whose notebook
  declares that parameter) and ``steps``, a list of one-step mappings, run in order::

    description: Quick run of the whole study on one world
    defaults:
      seed: 0
    steps:
      - name: pretrain
        notebook: notebooks/pretrain.ipynb
        parameters: {world: fashion, epochs: 2}
      - name: finetune
        notebook: notebooks/finetune.ipynb
        parameters: {epochs: 1}
        inputs: {theta_zs: book/results/pretrain/theta_zs.safetensors}
        validate: rftlib.book.validation:check_finetune

Values are YAML 1.2 scalars: ``1e-3`` is a float and only ``true``/``false`` are booleans.

Example:
    >>> parse_override("lr=1e-3"), parse_override("layers=[1, 2]"), parse_override("name=no")
    (('lr', 0.001), ('layers', [1, 2]), ('name', 'no'))
"""

from __future__ import annotations

import ast
import difflib
import importlib
import io
import os
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from rftlib.errors import ParameterError
from rftlib.files.manifest import portable_path, repo_root

PARAMS_DIR = Path("notebooks") / "params"
PARAMETERS_TAG = "parameters"

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
# Types


@dataclass(frozen=True)
class ParamType:
    """A parameter type: ``any``, ``none``, ``bool``, ``int``, ``float``, ``str``, ``list``,
    ``dict`` or ``union``; ``args`` holds a list's element type or a union's members."""

    kind: str
    args: tuple["ParamType", ...] = ()

    def __str__(self) -> str:
        if self.kind == "list":
            return f"list[{self.args[0]}]" if self.args and self.args[0].kind != "any" else "list"
        if self.kind == "union":
            return " | ".join(str(a) for a in self.args)
        return "None" if self.kind == "none" else self.kind

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is of this type (an int is a float; a bool is not an int).

        Example:
            >>> ParamType("float").accepts(3), ParamType("int").accepts(True)
            (True, False)
            >>> ParamType("list", (ParamType("int"),)).accepts([1, "2"])
            False
        """
        k = self.kind
        if k == "any":
            return True
        if k == "none":
            return value is None
        if k == "bool":
            return isinstance(value, bool)
        if k == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if k == "float":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if k == "str":
            return isinstance(value, str)
        if k == "dict":
            return isinstance(value, Mapping)
        if k == "list":
            if not isinstance(value, (list, tuple)):
                return False
            elem = self.args[0] if self.args else ParamType("any")
            return all(elem.accepts(v) for v in value)
        if k == "union":
            return any(a.accepts(value) for a in self.args)
        return True

    def coerce(self, value: Any) -> Any:
        """``value`` in this type's canonical form (ints become floats for a float; tuples lists)."""
        k = self.kind
        if k == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if k == "list" and isinstance(value, (list, tuple)):
            elem = self.args[0] if self.args else ParamType("any")
            return [elem.coerce(v) for v in value]
        if k == "union":
            for a in self.args:
                if a.accepts(value):
                    return a.coerce(value)
        return value


ANY = ParamType("any")


def _union(types: Iterable[ParamType]) -> ParamType:
    uniq: list[ParamType] = []
    for t in types:
        for m in (t.args if t.kind == "union" else (t,)):
            if m not in uniq:
                uniq.append(m)
    if any(t.kind == "any" for t in uniq):
        return ANY
    if ParamType("float") in uniq and ParamType("int") in uniq:
        uniq.remove(ParamType("int"))
    return uniq[0] if len(uniq) == 1 else ParamType("union", tuple(uniq))


def type_of_default(value: Any) -> ParamType:
    """The type a default value implies (``None`` implies ``any``).

    Example:
        >>> str(type_of_default([1, 2.5])), str(type_of_default(None)), str(type_of_default(["a"]))
        ('list[float]', 'any', 'list[str]')
    """
    if value is None:
        return ANY
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, cls):
            return ParamType(kind)
    if isinstance(value, (list, tuple)):
        return ParamType("list", (_union(type_of_default(v) for v in value) if value else ANY,))
    if isinstance(value, Mapping):
        return ParamType("dict")
    return ANY


_NAMES = {
    "int": ParamType("int"), "float": ParamType("float"), "str": ParamType("str"),
    "bool": ParamType("bool"), "list": ParamType("list", (ANY,)), "List": ParamType("list", (ANY,)),
    "tuple": ParamType("list", (ANY,)), "Tuple": ParamType("list", (ANY,)),
    "dict": ParamType("dict"), "Dict": ParamType("dict"), "None": ParamType("none"),
}


def _type_from_annotation(node: ast.expr | None) -> ParamType:
    """A :class:`ParamType` from an annotation's AST; unknown annotations give ``any``."""
    if node is None:
        return ANY
    if isinstance(node, ast.Constant) and node.value is None:
        return ParamType("none")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "int | None" as a string
        try:
            return _type_from_annotation(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return ANY
    if isinstance(node, ast.Attribute):  # typing.List
        return _NAMES.get(node.attr, ANY)
    if isinstance(node, ast.Name):
        return _NAMES.get(node.id, ANY)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_type_from_annotation(node.left), _type_from_annotation(node.right)])
    if isinstance(node, ast.Subscript):
        base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        sub = node.slice
        items = list(sub.elts) if isinstance(sub, ast.Tuple) else [sub]
        if base == "Optional":
            return _union([_type_from_annotation(items[0]), ParamType("none")])
        if base == "Union":
            return _union(_type_from_annotation(i) for i in items)
        if base in ("list", "List", "Sequence", "tuple", "Tuple"):
            items = [i for i in items if not (isinstance(i, ast.Constant) and i.value is Ellipsis)]
            return ParamType("list", (_union(_type_from_annotation(i) for i in items) if items else ANY,))
        if base in ("dict", "Dict", "Mapping"):
            return ParamType("dict")
    return ANY


_COMMENT_TYPE = re.compile(r"^\s*([A-Za-z_][\w\[\], |.]*?)\s*:(?:\s|$)")


def _type_from_comment(comment: str) -> ParamType | None:
    """The type a parameter's comment declares before a colon (``"list[str]: run names"``,
    ``"int or None: ..."``), or ``None`` when it declares none that is known.

    Example:
        >>> str(_type_from_comment("int or None: epochs")), _type_from_comment("note: text")
        ('int | None', None)
    """
    m = _COMMENT_TYPE.match(comment or "")
    if not m:
        return None
    text = re.sub(r"\s+or\s+", " | ", m.group(1))
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    known = set(_NAMES) | {"Optional", "Union", "Sequence", "Mapping"}
    if not names or not names <= known:
        return None
    t = _type_from_annotation(node)
    return None if t.kind == "any" else t


# ---------------------------------------------------------------------------------------------
# Reading a notebook's parameters cell


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its name, default value, type and the comment that explains it."""

    name: str
    default: Any
    type: ParamType
    help: str = ""


def _read_notebook(notebook: str | os.PathLike) -> Any:
    import nbformat

    p = resolve_path(notebook, kind="notebook")
    try:
        return nbformat.read(str(p), as_version=4)
    except Exception as e:  # noqa: BLE001 - nbformat raises several types
        raise ParameterError(f"cannot read notebook {portable_path(p)}: {e}") from e


def parameters_cell(nb: Any) -> tuple[int, str] | None:
    """Index and source of the first cell tagged ``parameters`` in a notebook node, or ``None``."""
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return i, cell.source
    return None


def _comments(source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def parse_parameters_source(source: str, where: str = "parameters cell") -> dict[str, ParamSpec]:
    """Parse a parameters cell's source into :class:`ParamSpec` s, in order.

    Each top-level ``name = literal`` or ``name: annotation = literal`` is a parameter; its help is
    the trailing comment (or the comment lines just above). Other statements are ignored.

    Raises:
        ParameterError: the cell is not valid Python, or a value is not a literal.

    Example:
        >>> specs = parse_parameters_source("alpha = 0.5  # float: coefficient\\nn: int | None = None")
        >>> [(s.name, s.default, str(s.type), s.help) for s in specs.values()]
        [('alpha', 0.5, 'float', 'float: coefficient'), ('n', None, 'int | None', '')]
    """
    lines = source.splitlines()
    clean = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
    try:
        tree = ast.parse(clean)
    except SyntaxError as e:
        raise ParameterError(f"{where} is not valid Python (line {e.lineno}: {e.msg})") from e
    comments = _comments(clean)
    specs: dict[str, ParamSpec] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            names, value, ann = [t.id for t in node.targets], node.value, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            names, value, ann = [node.target.id], node.value, node.annotation
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError) as e:
            raise ParameterError(
                f"{where}, line {node.lineno}: the value of {names[0]!r} is not a literal "
                f"({ast.get_source_segment(clean, value)!r}); parameters must be literals, "
                "derived values belong in a later cell"
            ) from e
        help_text = comments.get(node.end_lineno or node.lineno) or comments.get(node.lineno, "")
        if not help_text:  # comment lines directly above
            above, ln = [], node.lineno - 1
            while ln >= 1 and lines[ln - 1].strip().startswith("#"):
                above.insert(0, lines[ln - 1].strip().lstrip("#").strip())
                ln -= 1
            help_text = " ".join(above)
        if ann is not None:
            ptype = _type_from_annotation(ann)
        else:  # the comment's declared type when it admits the default ("list[str]: ..." for []),
            declared = _type_from_comment(help_text)  # else the default's own type
            ptype = declared if declared is not None and declared.accepts(default) else type_of_default(default)
        for name in names:
            specs[name] = ParamSpec(name, default, ptype, help_text)
    return specs


def notebook_parameters(notebook: str | os.PathLike) -> dict[str, ParamSpec]:
    """The parameters a notebook declares in its ``parameters`` cell (empty if it has none)."""
    nb = _read_notebook(notebook)
    found = parameters_cell(nb)
    if found is None:
        return {}
    index, source = found
    return parse_parameters_source(source, where=f"{portable_path(resolve_path(notebook))} cell {index}")


def notebook_validator(notebook: str | os.PathLike) -> str | None:
    """The ``"module:function"`` check named in the notebook's metadata (``metadata.rft.validate``)."""
    meta = _read_notebook(notebook).metadata.get("rft", {})
    return meta.get("validate") if isinstance(meta, Mapping) else None


def format_parameters(notebook: str | os.PathLike) -> str:
    """A table of a notebook's parameters: name, type, default and comment (for ``rft params``)."""
    specs = notebook_parameters(notebook)
    if not specs:
        return f"{portable_path(resolve_path(notebook))} has no cell tagged 'parameters'."
    rows = [(s.name, str(s.type), repr(s.default), s.help) for s in specs.values()]
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


def check_params(
    specs: Mapping[str, ParamSpec], params: Mapping[str, Any], where: str = "the notebook"
) -> dict[str, Any]:
    """Check names and types of ``params`` against ``specs``; return them coerced (int → float).

    Raises:
        ParameterError: listing every unknown name (with close matches and the allowed names) and
            every value of the wrong type (name, value, expected type).

    Example:
        >>> specs = parse_parameters_source("alpha = 0.5\\nepochs = 2")
        >>> check_params(specs, {"alpha": 1})
        {'alpha': 1.0}
        >>> check_params(specs, {"epoch": 3})
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: unknown parameter 'epoch' for the notebook (did you mean 'epochs'?); allowed: alpha, epochs
    """
    problems: list[str] = []
    out: dict[str, Any] = {}
    allowed = ", ".join(specs) or "(none: the notebook has no parameters cell)"
    for name, value in params.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.7)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            problems.append(f"unknown parameter {name!r} for {where}{hint}; allowed: {allowed}")
            continue
        if not spec.type.accepts(value):
            hint = " (quote it to pass a string)" if spec.type.kind == "str" and value is not None else ""
            problems.append(
                f"parameter {name!r} must be {spec.type}, got {type(value).__name__} {value!r}{hint}"
            )
            continue
        out[name] = spec.type.coerce(value)
    if problems:
        raise ParameterError("; ".join(problems))
    return out


def validate_params(
    notebook: str | os.PathLike,
    params: Mapping[str, Any],
    extra_checks: str | Callable[[dict], Any] | Sequence[str | Callable[[dict], Any]] | None = None,
) -> dict[str, Any]:
    """Validate ``params`` for ``notebook`` before running it; return them coerced.

    Checks names and types against the notebook's parameters cell, then runs ``extra_checks``
    (callables or ``"module:function"`` names, called with the full parameter dict: defaults
    updated with ``params``) and the check named in the notebook's metadata (``rft.validate``).
    A check signals a bad value by raising ``ValueError`` (a plain one is re-raised as
    :class:`ParameterError`).

    Raises:
        ParameterError: an unknown name, a wrong type, or a failed check.
    """
    where = portable_path(resolve_path(notebook, kind="notebook"))
    specs = notebook_parameters(notebook)
    out = check_params(specs, params, where=where)
    checks: list[Any] = []
    if extra_checks is not None:
        checks.extend(extra_checks if isinstance(extra_checks, (list, tuple)) else [extra_checks])
    meta_check = notebook_validator(notebook)
    if meta_check and meta_check not in checks:
        checks.append(meta_check)
    full = {**{k: s.default for k, s in specs.items()}, **out}
    for check in checks:
        fn = load_check(check)
        try:
            fn(dict(full))
        except ParameterError:
            raise
        except (ValueError, TypeError) as e:
            raise ParameterError(f"parameters for {where} rejected by {getattr(fn, '__name__', fn)}: {e}") from e
    return out


# ---------------------------------------------------------------------------------------------
# Parameter files


STEP_KEYS = frozenset({"name", "notebook", "parameters", "inputs", "validate", "timeout", "description"})
PIPELINE_KEYS = frozenset({"description", "defaults", "steps"})


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
    """A loaded parameter file: its steps (one for flat and one-step files) and pipeline defaults."""

    path: Path
    steps: list[Step]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    is_pipeline: bool = False

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
        """The step's parameters over the pipeline defaults that its notebook declares."""
        if specs is None:
            specs = notebook_parameters(step.notebook) if step.notebook else {}
        defaults = {k: v for k, v in self.defaults.items() if k in specs}
        return {**defaults, **step.parameters}


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
        )
    if "parameters" in data:
        return ParamFile(path=path, steps=[_step_from(data, where, default_name=path.stem)],
                         description=str(data.get("description") or ""))
    return ParamFile(path=path, steps=[Step(name=path.stem, notebook=None, parameters=data)])


__all__ = [
    "ParamFile",
    "ParamSpec",
    "ParamType",
    "Step",
    "apply_overrides",
    "check_params",
    "find_param_file",
    "format_parameters",
    "load_check",
    "load_param_file",
    "notebook_parameters",
    "notebook_validator",
    "parameters_cell",
    "parse_override",
    "parse_parameters_source",
    "resolve_path",
    "type_of_default",
    "validate_params",
    "yaml_load",
]
