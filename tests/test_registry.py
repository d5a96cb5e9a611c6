"""One test over every registered model config and every world, in the manner of timm's model tests.

Each tiny config is built with no weights and checked for invariants (batch dimension, finite
outputs, every parameter gets a gradient, the stages compose to the forward pass); each world is
loaded from its file, its checkpoint verified, and its classifier run on a few of its own images.
"""

from __future__ import annotations

import pytest
import torch

from rftlib.models.factory import build_classifier, create_clip, tiny_configs
from rftlib.worlds.paper import PaperWorld
from rftlib.worlds.protocol import KINDS, World
from rftlib.worlds.world import MiniWorld, available_worlds, load_world

MINIATURE = [w for w in available_worlds() if not w.startswith("paper-")]


@pytest.mark.parametrize("name", tiny_configs())
def test_every_model_config_builds_and_trains(name):
    torch.manual_seed(0)
    clip, tok = create_clip(name, seed=0)
    clf = build_classifier(clip, tok, ["a", "b", "c"], ["a photo of a {}."])
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.rand(2, 3, size, size)
    logits = clf(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    h = x
    for stage in clf.stages():
        h = stage(h)
    torch.testing.assert_close(h, logits)
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in clf.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters without a gradient: {missing}"


def test_the_registry_is_not_empty():
    assert len(tiny_configs()) >= 2 and len(MINIATURE) >= 3


@pytest.mark.parametrize("world", MINIATURE)
def test_every_world_loads_verifies_and_classifies(world):
    w = load_world(world)
    assert w.name == world
    assert len(w.verify_checkpoint()) == 64
    clf = w.zeroshot_classifier()
    x, y = w.eval_splits(n_eval=8, splits=["id"])["id"]
    with torch.no_grad():
        logits = clf(x[:8])
    assert logits.shape == (len(x[:8]), len(w.classnames)) and torch.isfinite(logits).all()
    assert int(y.max()) < len(w.classnames)


def _members(cls) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")} | set(cls.__annotations__)


@pytest.mark.parametrize("world", available_worlds())
def test_every_world_satisfies_the_one_world_interface(world):
    """Miniature worlds and paper settings alike: the steps never ask which kind they have."""
    w = load_world(world)
    assert isinstance(w, World) and w.kind in KINDS
    assert w.kind == ("paper" if world.startswith("paper-") else "mini")
    missing = sorted(n for n in _members(World) if not hasattr(type(w), n) and not hasattr(w, n))
    assert not missing, f"{world}: lacks {missing} of the World interface"


@pytest.mark.parametrize("cls", [MiniWorld, PaperWorld])
def test_both_world_classes_define_every_member_of_the_interface(cls):
    # on the class, so that a member a paper setting lacks shows without its weights or data
    fields = getattr(cls, "__dataclass_fields__", {})
    init_attrs = {"name", "model", "dataset", "input_mean", "input_std"}  # PaperWorld sets these in __init__
    missing = sorted(n for n in _members(World)
                     if not hasattr(cls, n) and n not in fields and not (cls is PaperWorld and n in init_attrs))
    assert not missing, f"{cls.__name__} lacks {missing}"


def test_a_class_missing_a_member_is_not_a_world():
    class NoCheck:
        kind, name, model, dataset, input_mean, input_std = "mini", "x", "rft-tiny", "d", [0.5], [0.5]
        classnames = templates = ood_splits = all_splits = []
        checkpoint = None

        def verify_checkpoint(self): ...
        def manifest(self): ...
        def eval_splits(self, n_eval, seed, splits=None): ...
        def id_training_data(self): ...
        def load_clip(self, checkpoint=None, verify=True): ...
        def zeroshot_classifier(self, checkpoint=None, verify=True): ...

    assert not isinstance(NoCheck(), World)
    NoCheck.check = lambda self: None
    assert isinstance(NoCheck(), World)


@pytest.mark.parametrize("world", MINIATURE)
def test_the_image_counts_that_parameters_are_checked_against_are_the_worlds_own(world):
    from rftlib.book.params import validate_params
    from rftlib.errors import ParameterError
    from rftlib.steps.fields import image_counts

    w = load_world(world)
    n_train, n_held = image_counts(w)
    assert n_train == len(w.id_training_data()[0]) and n_held == len(w.test_data()[0])
    validate_params("notebooks/sharpness.ipynb", {"world": world, "n_examples": n_train})
    with pytest.raises(ParameterError, match=rf"n_examples={n_train + 1} exceeds the {n_train} training images"):
        validate_params("notebooks/sharpness.ipynb", {"world": world, "n_examples": n_train + 1})
