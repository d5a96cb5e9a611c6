"""Bundled data sets and shift renderings: shapes, dtypes, labels, determinism."""

import pytest
import torch

from rftlib.worlds import data
from rftlib.errors import DataNotFoundError, ParameterError
from rftlib.worlds.shifts import STYLES, render, render_split


def test_fashion_mnist_real_files():
    try:
        x, y = data.load_fashion_mnist("test")
    except DataNotFoundError as e:
        pytest.fail(f"Fashion-MNIST must be installed by the setup script: {e}")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.bincount(y).tolist() == [1000] * 10
    xt, yt = data.load_fashion_mnist("train")
    assert xt.shape == (60000, 28, 28) and torch.bincount(yt).tolist() == [6000] * 10
    assert y[:5].tolist() == [9, 2, 1, 1, 6]  # the published first test labels


def test_fashion_missing_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION", tmp_path / "none")
    monkeypatch.setattr(data, "TORCHVISION_ROOT", tmp_path / "none2")
    monkeypatch.delenv("RFT_FASHION_MNIST", raising=False)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist("train")


def test_mnist5k():
    x, y = data.load_mnist5k()
    assert x.shape == (5000, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [500] * 10
    assert x.float().mean() > 20  # real digits, not blanks


def test_sklearn_digits():
    x, y = data.load_sklearn_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == torch.uint8 and int(x.max()) == 255
    assert y[:10].tolist() == list(range(10))


def test_bad_split_name():
    with pytest.raises(ParameterError, match="split"):
        data.load_fashion_mnist("validation")


@pytest.mark.parametrize("style", list(STYLES))
def test_styles_are_deterministic_under_a_seed(style):
    x = data.load_mnist5k()[0][:16]
    a = render_split(x, style, seed=7)
    b = render_split(x, style, seed=7)
    assert a.shape == (16, 3, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    if style != "photo":
        assert not torch.equal(a, render_split(x, "photo", seed=7)), "a shift must change the picture"


def test_random_styles_depend_on_seed():
    x = data.load_mnist5k()[0][:16]
    for style in ("rotated", "noisy", "texture", "colour", "small"):
        assert not torch.equal(render_split(x, style, 1), render_split(x, style, 2)), style


def test_unknown_style():
    with pytest.raises(ParameterError, match="known styles"):
        render(torch.zeros(1, 28, 28), "cubist", torch.Generator())
