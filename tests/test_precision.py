"""bf16 autocast against fp32 on a world's zero-shot classifier: within the stated tolerance.

The tolerance (:data:`MAX_ACCURACY_DIFF`, :data:`MAX_LOSS_REL_DIFF`) is what the study accepts from a
change of precision in an evaluation sweep; `rft bench` reports the same differences on 500 images
of every split (measured: at most 2 examples of 500, relative loss 1.8e-3).
"""

import pytest
import torch

from rftlib.core.evaluation import evaluate_split
from rftlib.core.precision import check_precision
from rftlib.worlds.world import load_world

#: bf16 may change the accuracy by at most this fraction of the examples, the mean loss by at most
#: this relative amount.
MAX_ACCURACY_DIFF = 0.02
MAX_LOSS_REL_DIFF = 1e-2


@pytest.fixture(scope="module")
def fashion():
    w = load_world("fashion")
    return w.zeroshot_classifier().eval(), w.eval_splits(n_eval=300)


@pytest.mark.parametrize("split", ["id", "inverted"])
def test_bf16_evaluation_is_within_tolerance_of_fp32(fashion, split):
    model, splits = fashion
    with torch.no_grad():
        r32 = evaluate_split(model, splits[split], precision="fp32")
        r16 = evaluate_split(model, splits[split], precision="bf16")
    assert r16["n"] == r32["n"] == 300
    assert abs(r16["accuracy"] - r32["accuracy"]) <= MAX_ACCURACY_DIFF
    assert abs(r16["loss"] - r32["loss"]) <= MAX_LOSS_REL_DIFF * abs(r32["loss"])
    assert r16["loss"] != r32["loss"]  # bf16 really ran: the numbers are not fp32's


def test_fp32_is_the_default_and_bit_stable(fashion):
    model, splits = fashion
    assert check_precision("fp32") == "fp32"
    a, b = (evaluate_split(model, splits["id"]) for _ in range(2))
    assert a == b
