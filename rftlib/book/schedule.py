"""The step graph of a pipeline, the thread/process policy, and a scheduler for independent steps.

**Dependencies** (:func:`step_graph`), from the pipeline file alone, in file order:

* *explicit*: step ``S`` depends on an earlier step ``T`` when a string parameter of ``S`` (e.g.
  ``interpolate_dir``) or one of its ``inputs`` names ``T``'s results folder or a path inside it
  (its folder, or ``<results root>/<T>``: ``book/results/<T>`` for the book's pipelines);
* *same world*: steps of one ``world`` parameter share files the graph cannot see (fine-tuned
  weights under ``runs_root``). A step without explicit dependencies depends on the previous step of
  its world (file order). A step with explicit ones depends on them, and on every step of its world
  between the last of them and itself that has no explicit dependencies (such a step may write
  shared files); steps that each name their inputs (sharpness and sparsity, both reading the
  interpolation and straggler results) are independent of each other;
* a step without a ``world`` parameter is a barrier: it depends on every earlier step, and every
  later step depends on it;
* different worlds are independent.

With ``--only``/``--from`` a step waits for the selected steps among all its ancestors.

**Policy** (:func:`thread_policy`): never more busy compute threads than free cores. Free cores are
``os.cpu_count()`` minus the 1-minute load average (rounded, at least 1); by default as many steps run
side by side as there are free cores, and each kernel gets ``free cores // jobs`` threads (at least
1), set through ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``RFT_THREADS``
(:func:`kernel_env`), which torch reads when the kernel imports it.

**Instruction set** (``isa``): floating-point sums depend on the vector instructions the kernels use,
so the same code gives different low digits on a CPU with AVX-512 and on one with AVX2 only (a
fine-tuning run's loss differed from the fifth decimal on). On x86-64 the policy therefore caps
torch's CPU kernels, MKL and oneDNN at AVX2 by default (:data:`ISA_VARS`), which nearly every x86-64
machine has; this removes that source of difference between machines, not every one (a CPU of
another maker can still round differently: the reproduction page gives what was measured).
``isa="native"`` lets each library use the machine's best instructions.

Example:
    >>> params = {"a-ft": {"world": "a"}, "a-eval": {"world": "a"}, "b-ft": {"world": "b"},
    ...           "a-s1": {"world": "a", "eval_dir": "book/results/a-eval"},
    ...           "a-s2": {"world": "a", "eval_dir": "book/results/a-eval"}}
    >>> g = step_graph(list(params), params, {n: f"book/results/{n}" for n in params})
    >>> g["a-eval"], g["b-ft"], g["a-s1"], g["a-s2"]
    (('a-ft',), (), ('a-eval',), ('a-eval',))
    >>> p = thread_policy(None, cpu_count=4, load=1.2)
    >>> (p.jobs, p.threads, p.free_cores)
    (3, 1, 3)
"""

from __future__ import annotations

import os
import platform
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rftlib.errors import ParameterError
from rftlib.files.manifest import repo_path

#: The default results root of the book (a pipeline's steps named as ``<results root>/<step>`` count
#: as that step; this root where the pipeline names none).
BOOK_RESULTS = Path("book") / "results"
#: Variables that set a kernel's compute threads.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RFT_THREADS")
#: Variables that cap the instructions of torch's CPU kernels, MKL and oneDNN at AVX2 (``isa="avx2"``).
ISA_VARS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
#: The instruction-set choices: ``avx2`` (x86-64 only) or ``native``.
ISAS = ("avx2", "native")


# ---------------------------------------------------------------------------------------------
# The graph


def _named_paths(params: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> list[Path]:
    """The paths named by the string parameters (also inside lists) and inputs of a step."""
    values: list[Any] = [v for k, v in params.items() if k != "out_dir"] + list((inputs or {}).values())
    flat = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v])]
    return [repo_path(v) for v in flat if isinstance(v, str) and v.strip() and "\n" not in v and len(v) < 1024]


def explicit_dependencies(names: Sequence[str], params: Mapping[str, Mapping[str, Any]],
                          outputs: Mapping[str, str | os.PathLike],
                          inputs: Mapping[str, Mapping[str, Any]] | None = None,
                          results_root: str | os.PathLike = BOOK_RESULTS) -> dict[str, tuple[str, ...]]:
    """For each step, the earlier steps whose results folder (``outputs``, or its folder under the
    pipeline's ``results_root``) one of its parameters or inputs names.

    Example:
        >>> explicit_dependencies(["a", "b"], {"a": {}, "b": {"x_dir": "book/results/a/t.csv"}},
        ...                       {"a": "out/a", "b": "out/b"})
        {'a': (), 'b': ('a',)}
        >>> explicit_dependencies(["a", "b"], {"a": {}, "b": {"x_dir": "book/results/a/t.csv"}},
        ...                       {"a": "out/a", "b": "out/b"}, results_root="book/results-quick")
        {'a': (), 'b': ()}
    """
    folders = {n: {repo_path(outputs[n]), repo_path(Path(results_root) / n)} for n in names}
    out: dict[str, tuple[str, ...]] = {}
    for i, s in enumerate(names):
        paths = _named_paths(params.get(s, {}), (inputs or {}).get(s))
        out[s] = tuple(t for t in names[:i]
                       if any(p == f or f in p.parents for p in paths for f in folders[t]))
    return out


def step_graph(names: Sequence[str], params: Mapping[str, Mapping[str, Any]],
               outputs: Mapping[str, str | os.PathLike],
               inputs: Mapping[str, Mapping[str, Any]] | None = None,
               results_root: str | os.PathLike = BOOK_RESULTS) -> dict[str, tuple[str, ...]]:
    """The direct dependencies of each step (rules in the module docstring), in file order.

    Args:
        names: the step names in file order.
        params: each step's effective parameters (notebook defaults, pipeline defaults, its own).
        outputs: each step's results folder.
        inputs: each step's named input files (``inputs:`` of the pipeline file).
        results_root: the pipeline's results root (relative: from the repository root).
    """
    explicit = explicit_dependencies(names, params, outputs, inputs, results_root)
    world = {n: params.get(n, {}).get("world") for n in names}
    deps: dict[str, tuple[str, ...]] = {}
    for i, s in enumerate(names):
        earlier = list(names[:i])
        if world[s] is None:
            deps[s] = tuple(earlier)
            continue
        barriers = [t for t in earlier if world[t] is None]
        same = [t for t in earlier if world[t] == world[s]]
        last_barrier = earlier.index(barriers[-1]) if barriers else -1
        same = [t for t in same if earlier.index(t) > last_barrier]
        if not explicit[s]:
            chosen = same[-1:]
        else:
            last = max(earlier.index(t) for t in explicit[s])
            chosen = list(explicit[s]) + [t for t in same if earlier.index(t) > last and not explicit[t]]
        deps[s] = tuple(t for t in earlier if t in set(chosen) or t in barriers[-1:])
    return deps


def ancestors(graph: Mapping[str, Sequence[str]], step: str) -> set[str]:
    """Every step ``step`` depends on, directly or through others.

    Example:
        >>> sorted(ancestors({"a": (), "b": ("a",), "c": ("b",)}, "c"))
        ['a', 'b']
    """
    seen: set[str] = set()
    todo = list(graph.get(step, ()))
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(graph.get(t, ()))
    return seen


def restrict(graph: Mapping[str, Sequence[str]], selected: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The graph among ``selected`` steps: each waits for the selected steps among its ancestors.

    Example:
        >>> restrict({"a": (), "b": ("a",), "c": ("b",)}, ["a", "c"])
        {'a': (), 'c': ('a',)}
    """
    keep = set(selected)
    return {s: tuple(t for t in selected if t in ancestors(graph, s) and t in keep) for s in selected}


def critical_path(graph: Mapping[str, Sequence[str]], cost: Mapping[str, float]) -> dict[str, float]:
    """For each step, its cost plus the longest chain of steps that wait for it (its urgency).

    Example:
        >>> critical_path({"a": (), "b": ("a",), "c": ()}, {"a": 1.0, "b": 5.0, "c": 2.0})
        {'a': 6.0, 'b': 5.0, 'c': 2.0}
    """
    users: dict[str, list[str]] = {s: [] for s in graph}
    for s, ds in graph.items():
        for d in ds:
            users.setdefault(d, []).append(s)
    memo: dict[str, float] = {}

    def length(s: str) -> float:
        if s not in memo:
            memo[s] = float(cost.get(s, 1.0)) + max((length(u) for u in users.get(s, [])), default=0.0)
        return memo[s]

    return {s: length(s) for s in graph}


# ---------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True)
class Policy:
    """How a pipeline runs: steps side by side (``jobs``), threads per kernel, and the machine then."""

    jobs: int
    threads: int
    cpu_count: int
    load: float          # 1-minute load average at the start
    free_cores: int
    isa: str = "native"  # "avx2": kernels capped at AVX2 (ISA_VARS); "native": the machine's best

    def to_dict(self) -> dict[str, Any]:
        """The policy as recorded in manifests."""
        return {**asdict(self), "load": round(self.load, 2)}


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # not on every platform
        return 0.0


def resolve_isa(isa: str | None = None) -> str:
    """The instruction-set choice ``isa``, checked; ``None``: ``avx2`` on x86-64, else ``native``.

    Raises:
        ParameterError: not one of :data:`ISAS`, or ``avx2`` on a CPU that is not x86-64.

    Example:
        >>> resolve_isa("native")
        'native'
        >>> resolve_isa("avx512")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: --isa must be one of avx2, native, got 'avx512'
    """
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if isa is not None and isa not in ISAS:
        raise ParameterError(f"--isa must be one of {', '.join(ISAS)}, got {isa!r}")
    if isa == "avx2" and not x86:
        raise ParameterError(f"--isa avx2 is for x86-64 CPUs; this one is {platform.machine()!r}: use --isa native")
    return isa or ("avx2" if x86 else "native")


def isa_env(isa: str) -> dict[str, str]:
    """The kernel variables of a resolved ``isa``: :data:`ISA_VARS` for ``avx2``, none for ``native``.

    Example:
        >>> isa_env("avx2")["ATEN_CPU_CAPABILITY"], isa_env("native")
        ('avx2', {})
    """
    return dict(ISA_VARS) if isa == "avx2" else {}


def thread_policy(jobs: int | None = None, threads: int | None = None, *, cpu_count: int | None = None,
                  load: float | None = None, isa: str | None = None) -> Policy:
    """The thread and process policy: ``jobs`` steps side by side (default: the free cores), each
    kernel with ``threads`` threads (default: free cores // jobs, at least 1) and the instructions
    ``isa`` (default: ``avx2`` on x86-64, else ``native``).

    Raises:
        ParameterError: ``jobs`` or ``threads`` not a positive integer; a bad ``isa``
            (:func:`resolve_isa`).

    Example:
        >>> thread_policy(1, cpu_count=2, load=0.0).threads, thread_policy(4, cpu_count=2, load=0.0).threads
        (2, 1)
        >>> thread_policy(0)
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: --jobs must be a positive integer (steps run side by side), got 0
    """
    chosen = resolve_isa(isa)
    for name, v, what in (("--jobs", jobs, "steps run side by side"), ("--threads", threads, "threads per kernel")):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ParameterError(f"{name} must be a positive integer ({what}), got {v!r}")
    cpus = cpu_count or os.cpu_count() or 1
    now = _load() if load is None else float(load)
    free = max(1, cpus - int(round(now)))
    n = jobs or free
    return Policy(jobs=n, threads=threads or max(1, free // n), cpu_count=cpus, load=now, free_cores=free,
                  isa=chosen)


def kernel_env(policy: Policy) -> dict[str, str]:
    """The environment that gives a kernel the policy's threads and instruction set (with
    ``isa="native"`` the kernel keeps this process's variables, a user's own caps included).

    Example:
        >>> env = kernel_env(thread_policy(2, cpu_count=2, load=0.0, isa="native"))
        >>> env["OMP_NUM_THREADS"], "ATEN_CPU_CAPABILITY" in env
        ('1', False)
    """
    return {**{v: str(policy.threads) for v in THREAD_VARS}, **isa_env(policy.isa)}


# ---------------------------------------------------------------------------------------------
# The scheduler


def run_graph(graph: Mapping[str, Sequence[str]], run_one: Callable[[str], Any], jobs: int,
              priority: Mapping[str, float] | None = None, halt_on: tuple[type[BaseException], ...] = (),
              ) -> tuple[dict[str, Any], dict[str, BaseException], dict[str, str]]:
    """Run every step of ``graph`` once its dependencies succeeded, up to ``jobs`` at a time, the most
    urgent first (highest ``priority``, then file order). A failed step stops its dependants only;
    an error of a ``halt_on`` type (an interrupted step) starts no further step.

    Returns:
        (results of the steps that ran, their errors, and for each step not run the failed step it
        needed).

    Example:
        >>> def one(s):
        ...     if s == "b": raise ValueError("no")
        ...     return s.upper()
        >>> ok, bad, skipped = run_graph({"a": (), "b": (), "c": ("b",), "d": ("a",)}, one, jobs=2)
        >>> sorted(ok.items()), list(bad), skipped
        ([('a', 'A'), ('d', 'D')], ['b'], {'c': 'b'})
    """
    order = list(graph)
    prio = priority or {}
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    skipped: dict[str, str] = {}
    running: dict[Future, str] = {}
    pending = list(order)
    halted = False
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="rft-step") as pool:
        while pending or running:
            for s in list(pending):
                blocked = next((d for d in graph[s] if d in errors or d in skipped), None)
                if blocked is not None:
                    skipped[s] = skipped.get(blocked, blocked)
                    pending.remove(s)
            ready = [s for s in pending if all(d in results for d in graph[s])]
            ready.sort(key=lambda s: (-prio.get(s, 0.0), order.index(s)))
            for s in ([] if halted else ready[: max(0, jobs - len(running))]):
                running[pool.submit(run_one, s)] = s
                pending.remove(s)
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                s = running.pop(f)
                try:
                    results[s] = f.result()
                except Exception as e:  # noqa: BLE001 - one step's failure stops only its dependants
                    errors[s] = e
                    halted = halted or isinstance(e, halt_on)
    return results, errors, skipped


__all__ = ["ISAS", "ISA_VARS", "Policy", "ancestors", "critical_path", "explicit_dependencies", "isa_env",
           "kernel_env", "resolve_isa", "restrict", "run_graph", "step_graph", "thread_policy"]
