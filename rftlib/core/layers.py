"""What a "layer" is: groupings of a model's state-dict keys at three granularities.

- ``block``: one stage of the forward pass (``embed``, each residual block, ``post``, ``head``);
  the default "layer" of the study (see :meth:`rftlib.models.factory.ImageClassifier.stages`).
- ``module``: the module that owns the tensor (e.g. ``visual.transformer.resblocks.0.mlp.c_fc``).
- ``tensor``: every state-dict entry alone.

Every grouping covers each key exactly once, in state-dict order.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> layer_groups(net, "module")
    {'0': ['0.weight', '0.bias'], '2': ['2.weight', '2.bias']}
    >>> list(layer_groups(net, "tensor"))
    ['0.weight', '0.bias', '2.weight', '2.bias']
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from rftlib.errors import ParameterError

Granularity = Literal["block", "module", "tensor"]
GRANULARITIES: tuple[str, ...] = ("block", "module", "tensor")


def layer_groups(model: nn.Module, granularity: str = "block") -> dict[str, list[str]]:
    """Map layer name → state-dict keys, covering every key exactly once.

    ``block`` needs a model with ``stages()`` (an :class:`~rftlib.models.factory.ImageClassifier`); other
    modules fall back to ``module`` granularity.
    """
    if granularity not in GRANULARITIES:
        raise ParameterError(f"granularity={granularity!r} is not one of {GRANULARITIES}.")
    keys = list(model.state_dict().keys())
    if granularity == "tensor":
        return {k: [k] for k in keys}
    if granularity == "block" and hasattr(model, "stages"):
        groups: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        stages = model.stages()
        for k in keys:
            hits = [s.name for s in stages if any(k == p or k.startswith(p) for p in s.prefixes)]
            if len(hits) != 1:
                raise RuntimeError(f"key {k!r} belongs to {len(hits)} stages {hits}; stage prefixes must partition the keys.")
            owner[k] = hits[0]
        for s in stages:
            members = [k for k in keys if owner[k] == s.name]
            if members:
                groups[s.name] = members
        return groups
    groups = {}
    for k in keys:
        groups.setdefault(k.rsplit(".", 1)[0] if "." in k else k, []).append(k)
    return groups


def resolve_layers(groups: dict[str, list[str]], names: list[str] | str) -> list[str]:
    """Keys of the named layers (``"all"`` for every layer); unknown names are a clear error.

    Example:
        >>> g = {"block0": ["a"], "head": ["b", "c"]}
        >>> resolve_layers(g, ["head"])
        ['b', 'c']
        >>> resolve_layers(g, "all")
        ['a', 'b', 'c']
    """
    if names == "all":
        return [k for ks in groups.values() for k in ks]
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise ParameterError(f"layer(s) {unknown} unknown; this model's layers are {list(groups)} (or 'all').")
    return [k for n in names for k in groups[n]]
