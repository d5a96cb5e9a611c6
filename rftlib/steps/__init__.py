"""Study steps: one module per notebook, each with one parameter object ``Params`` and ``run(params)``.

:data:`STEPS` maps a notebook's file name stem to its step's parameter class: the runner validates a
notebook's parameters with it before any kernel starts, and the notebook's first code line builds
the same object (``p = sharpness.Params.from_globals(globals())``).

Example:
    >>> sorted(STEPS)
    ['evidence', 'finetune', 'interpolate', 'sharpness', 'sparsity', 'stragglers', 'zeroshot']
    >>> STEPS["sharpness"].defaults()["kind"]
    'worst'
"""

from __future__ import annotations

from rftlib.steps import evidence, finetune, interpolate, sharpness, sparsity, stragglers, zeroshot
from rftlib.steps.parameters import StepParams

#: Notebook stem → the parameter class of its step.
STEPS: dict[str, type[StepParams]] = {
    "zeroshot": zeroshot.Params,
    "finetune": finetune.Params,
    "interpolate": interpolate.Params,
    "stragglers": stragglers.Params,
    "sharpness": sharpness.Params,
    "sparsity": sparsity.Params,
    "evidence": evidence.Params,
}

__all__ = ["STEPS", "StepParams"]
