"""Shared test set-up: CPU only, offline, quiet progress bars, two threads; tiny-model fixtures.

(Shared file: add fixtures, keep the environment block.)
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RFT_PROGRESS"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_clip_session():
    from rftlib.models.factory import create_clip

    return create_clip("rft-tiny", seed=0)


@pytest.fixture
def tiny_clip(tiny_clip_session):
    import copy

    clip, tok = tiny_clip_session
    return copy.deepcopy(clip), tok


@pytest.fixture
def tiny_classifier(tiny_clip_session):
    """A fresh 3-class classifier on the tiny CLIP (inputs: 3×28×28 in [0, 1])."""
    from rftlib.models.factory import build_classifier

    clip, tok = tiny_clip_session
    return build_classifier(clip, tok, ["a", "b", "c"], ["a photo of a {}."], (0.4,) * 3, (0.3,) * 3)
