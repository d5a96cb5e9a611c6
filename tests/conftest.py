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

from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Folders of the checkout that only the user's own runs write: a test writes into tmp_path instead.
GUARDED = ("book/results", "book/results-quick", "runs")


def _entries() -> set[str]:
    return {str(p.relative_to(ROOT)) for g in GUARDED if (ROOT / g).is_dir() for p in (ROOT / g).glob("*/*")}


@pytest.fixture(scope="session", autouse=True)
def checkout_left_alone():
    """Fails the session when a test left a new file or folder in the checkout's results or runs."""
    before = _entries()
    yield
    new = sorted(_entries() - before)
    assert not new, f"tests wrote into the checkout (write into tmp_path): {new[:5]}"


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
