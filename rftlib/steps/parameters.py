"""One parameter object per study step: the only validation of a notebook's parameters.

Each step module (:mod:`rftlib.steps.zeroshot`, …) defines ``Params``, a frozen dataclass derived
from :class:`StepParams`. Every field carries its documentation and its checks (:func:`param`:
``check=at_least(1)``, ``one_of(KINDS)``, …, or a function of :mod:`rftlib.steps.fields`);
``__post_init__`` checks every field's type, then each field's value (its checks, then a
``check_<name>`` method where the class has one, in field order), then the rules between fields
(``check_together``), and raises *one* :class:`~rftlib.errors.ParameterError` listing every problem
as ``name=value is …; allowed: …`` (the list is its ``problems`` attribute).

The runner builds the object from a notebook's parameters before any kernel starts
(:meth:`StepParams.from_mapping`); the notebook's first code line builds the same object
(``p = sharpness.Params.from_globals(globals())``).

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Toy(StepParams):
    ...     STEP = "toy"
    ...     n: int = param(3, "how many", check=at_least(1))
    ...     rhos: list[float] = param((0.1,), "radii", check=each_within(lambda r: r > 0, "a number > 0"))
    >>> Toy(n=2, rhos=[1]).rhos
    [1.0]
    >>> Toy.from_mapping({"n": 0, "rhos": "0.1", "rho": 1})
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: bad parameters for notebooks/toy.ipynb: unknown parameter 'rho' (did you mean 'rhos'?); allowed: n, rhos; rhos='0.1' is not a list of numbers (did you mean [0.1]?); allowed: a list of numbers; n=0 is too small; allowed: an integer >= 1
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import yaml

from rftlib.errors import ParameterError

__all__ = ["Check", "Problems", "StepParams", "a_path", "at_least", "did_you_mean", "each_within", "one_of", "param",
           "some_of", "within"]

#: A field's check: ``check(problems, name)`` records what is wrong with the value of ``name``.
Check = Callable[["Problems", str], None]


def param(default: Any, doc: str, check: Check | Sequence[Check] = ()) -> Any:
    """A documented dataclass field with its check(s); a list default is copied for every object.

    Example:
        >>> f = param(3, "how many", check=at_least(1))
        >>> f.metadata["doc"], len(f.metadata["checks"])
        ('how many', 1)
    """
    meta = {"doc": doc, "checks": tuple([check] if callable(check) else check)}
    if isinstance(default, (list, tuple)):
        items = list(default)
        return dataclasses.field(default_factory=lambda: list(items), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def at_least(minimum: int, why: str = "") -> Check:
    """The integer must be ``>= minimum`` (:meth:`Problems.at_least`)."""
    return lambda p, name: p.at_least(name, minimum, why)


def one_of(allowed: Sequence[str]) -> Check:
    """The value must be one of ``allowed`` (:meth:`Problems.choice`)."""
    return lambda p, name: p.choice(name, allowed)


def some_of(allowed: Sequence[str], what: str = "") -> Check:
    """A non-empty list of distinct members of ``allowed`` (:meth:`Problems.choices`)."""
    return lambda p, name: p.choices(name, allowed, what)


def within(ok: Callable[[float], bool], allowed: str) -> Check:
    """A finite number satisfying ``ok`` (:meth:`Problems.number`)."""
    return lambda p, name: p.number(name, ok, allowed)


def each_within(ok: Callable[[float], bool], allowed: str) -> Check:
    """A non-empty list of distinct finite numbers, each satisfying ``ok`` (:meth:`Problems.numbers`)."""
    return lambda p, name: p.numbers(name, ok, allowed)


def a_path(what: str) -> Check:
    """A non-blank path string (:meth:`Problems.path`)."""
    return lambda p, name: p.path(name, what)


def did_you_mean(value: Any, allowed: Sequence[Any], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the allowed name closest to ``value``, or ``""``.

    Example:
        >>> did_you_mean("fashon", ["digits", "fashion"]), did_you_mean("zzz", ["digits"])
        (" (did you mean 'fashion'?)", '')
    """
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != value else ""


class Problems:
    """The problems found in one step's parameters, with the checks the fields share.

    Example:
        >>> p = Problems({"k": 0, "hold": "bth"})
        >>> p.at_least("k", 1); p.choice("hold", ("ft", "zs", "both"))
        >>> for item in p.items:
        ...     print(item)
        k=0 is too small; allowed: an integer >= 1
        hold='bth' is unknown (did you mean 'both'?); allowed: 'ft', 'zs', 'both'
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.items: list[str] = []
        self.bad: set[str] = set()
        self.context: dict[str, Any] = {}  # what one check found for later ones (the loaded world)

    def add(self, name: str, value: Any, reason: str, allowed: str) -> None:
        """Record ``name=value reason; allowed: allowed`` (``name`` may be ``ps[1]``)."""
        self.items.append(f"{name}={value!r} {reason}; allowed: {allowed}")
        self.bad.add(name.split("[")[0])

    def note(self, text: str) -> None:
        """Record a problem worded by someone else (a paper setting's missing files)."""
        self.items.append(text.rstrip("."))

    def ok(self, *names: str) -> bool:
        """Whether none of ``names`` has a recorded problem (cross-field rules need good inputs)."""
        return not (self.bad & set(names))

    def at_least(self, name: str, minimum: int, why: str = "") -> None:
        """The integer ``name`` must be ``>= minimum``."""
        v = self.values[name]
        if v is not None and v < minimum:
            self.add(name, v, "is too small", f"an integer >= {minimum}" + (f" ({why})" if why else ""))

    def choice(self, name: str, allowed: Sequence[str]) -> None:
        """``name`` must be one of ``allowed`` (with "did you mean")."""
        v = self.values[name]
        if v not in allowed:
            self.add(name, v, f"is unknown{did_you_mean(v, allowed)}", ", ".join(repr(a) for a in allowed))

    def choices(self, name: str, allowed: Sequence[str], what: str) -> None:
        """``name`` must be a non-empty list of distinct members of ``allowed``."""
        v = self.values[name]
        if not v:
            self.add(name, v, "is not a non-empty list", f"a list of {', '.join(repr(a) for a in allowed)}{what}")
            return
        for i, x in enumerate(v):
            if x not in allowed:
                self.add(f"{name}[{i}]", x, f"is unknown{did_you_mean(x, allowed)}", ", ".join(repr(a) for a in allowed))
        if len(set(v)) != len(v):
            self.add(name, list(v), "repeats a value", "each value once")

    def numbers(self, name: str, ok: Callable[[float], bool], allowed: str) -> None:
        """``name`` must be a non-empty list of distinct finite numbers, each satisfying ``ok``."""
        v = self.values[name]
        if not v:
            self.add(name, v, "is not a non-empty list", f"a list of numbers, each {allowed}")
            return
        for i, x in enumerate(v):
            if not (math.isfinite(x) and ok(x)):
                self.add(f"{name}[{i}]", x, "is out of range", allowed)
        if self.ok(name) and len(set(v)) != len(v):
            self.add(name, list(v), "repeats a value", "each value once")

    def number(self, name: str, ok: Callable[[float], bool], allowed: str) -> None:
        """The number ``name`` must be finite and satisfy ``ok``."""
        v = self.values[name]
        if not (math.isfinite(v) and ok(v)):
            self.add(name, v, "is out of range", allowed)

    def path(self, name: str, what: str) -> None:
        """``name`` must be a non-blank path string."""
        if not self.values[name].strip():
            self.add(name, self.values[name], "is not a usable path", what)


# ---------------------------------------------------------------------------------------------
# Types of the fields: the few the steps use


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: Field type → (test, canonical form, wording for "allowed").
_TYPES: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    "int": (_is_int, lambda v: v, "an integer"),
    "int | None": (lambda v: v is None or _is_int(v), lambda v: v, "an integer or null"),
    "float": (_is_num, float, "a number"),
    "bool": (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
    "str": (lambda v: isinstance(v, str), lambda v: v, "a string"),
    "list[float]": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_num, v)),
                    lambda v: [float(x) for x in v], "a list of numbers"),
    "list[str]": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                  lambda v: list(v), "a list of strings"),
}


def _hint(value: Any, kind: str) -> str:
    """A "did you mean" for a value of the wrong type: ``"0.1"`` for a list → ``[0.1]``."""
    if kind.startswith("list"):
        parsed = value
        if isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return ""
        if not isinstance(parsed, (list, tuple)):
            parsed = [parsed] if parsed is not None and not isinstance(parsed, (dict, bool)) else None
        if parsed is not None and _TYPES[kind][0](parsed):
            return f" (did you mean {list(parsed)!r}?)"
        return ""
    if kind == "str" and value is not None:
        return f" (quote it to pass a string: did you mean {str(value)!r}?)"
    if kind in ("int", "int | None") and _is_num(value) and float(value).is_integer():
        return f" (did you mean {int(value)}?)"
    return ""


def _type_problem(name: str, value: Any, kind: str) -> str | None:
    test, _, words = _TYPES[kind]
    if test(value):
        return None
    article = "an integer" if kind.startswith("int") else words
    return f"{name}={value!r} is not {article}{_hint(value, kind)}; allowed: {words}"


# ---------------------------------------------------------------------------------------------
# The base class


@dataclasses.dataclass(frozen=True)
class StepParams:
    """Base of the steps' parameter objects; subclasses set :attr:`STEP` and declare fields."""

    STEP: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise self._error(problems)

    def _resolve_dirs(self) -> None:
        """An empty results-folder field (``out_dir``, ``<step>_dir``) becomes the world's folder of
        that step, ``book/results/<world>-<step>`` (the folders the pipelines write)."""
        world = getattr(self, "world", "")
        world = world if isinstance(world, str) else ""
        for f in dataclasses.fields(self):
            if f.name.endswith("_dir") and isinstance(getattr(self, f.name), str) and not getattr(self, f.name).strip():
                step = self.STEP if f.name == "out_dir" else f.name[: -len("_dir")]
                name = Path(world).parent.name if Path(world).suffix in (".yaml", ".yml") else world
                object.__setattr__(self, f.name, f"book/results/{name}-{step}" if name else f"book/results/{step}")

    def _problems(self) -> list[str]:
        p = Problems({})
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = _type_problem(f.name, value, str(f.type))
            if problem:
                p.items.append(problem)
                p.bad.add(f.name)
            else:
                object.__setattr__(self, f.name, _TYPES[str(f.type)][1](value))
        self._resolve_dirs()
        p.values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for f in dataclasses.fields(self):
            for check in f.metadata.get("checks", ()):
                if p.ok(f.name):
                    check(p, f.name)
            method = getattr(self, f"check_{f.name}", None)
            if method is not None and p.ok(f.name):
                method(p)
        self.check_together(p)
        return p.items

    def check_together(self, p: Problems) -> None:
        """Rules between fields (override); ``p.ok(name)`` says whether a field passed its own check."""

    @classmethod
    def _error(cls, problems: list[str]) -> ParameterError:
        err = ParameterError(f"bad parameters for notebooks/{cls.STEP}.ipynb: " + "; ".join(problems))
        err.problems = list(problems)  # type: ignore[attr-defined]
        return err

    @classmethod
    def names(cls) -> list[str]:
        """The parameter names, in order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Each parameter's documentation."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each parameter's default value."""
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        return out

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "StepParams":
        """The object from ``values`` (defaults fill the rest); unknown names are problems too."""
        names = cls.names()
        unknown = [
            f"unknown parameter {k!r}{did_you_mean(k, names, 0.7)}; allowed: {', '.join(names)}"
            for k in values if k not in names
        ]
        known = {k: v for k, v in values.items() if k in names}
        try:
            obj = cls(**known)
        except ParameterError as e:
            raise cls._error(unknown + list(getattr(e, "problems", [str(e)]))) from None
        if unknown:
            raise cls._error(unknown)
        return obj

    @classmethod
    def from_globals(cls, namespace: Mapping[str, Any]) -> "StepParams":
        """The object from a notebook's namespace: the variables of its parameters cell."""
        return cls.from_mapping({k: namespace[k] for k in cls.names() if k in namespace})

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (lists copied)."""
        return dataclasses.asdict(self)

    def inputs(self) -> dict[str, Path]:
        """What the step reads that no path parameter names, by name: its world's file and, for a
        miniature world, θ_zs's checkpoint, so that an edited or re-pretrained world reruns the
        step (a paper setting's weights and data are named by the variables the runner fingerprints).
        The runner hashes these into the cache key."""
        world = getattr(self, "world", None)
        if not isinstance(world, str) or not world:
            return {}
        from rftlib.worlds.world import load_world, world_file

        w = load_world(world)
        found = {"world": world_file(world)}
        return {**found, "theta_zs": w.checkpoint} if w.kind == "mini" and w.checkpoint.is_file() else found

    def outputs(self) -> list[Path]:
        """Files the step writes outside its results folder (override): the runner reruns a cached
        step when one of them is missing."""
        return []
