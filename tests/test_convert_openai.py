"""`rft convert-openai` (rftlib.models.convert_openai): the command the TorchScript refusal names exists and converts safely."""

import pytest
import torch
from torch import nn

from rftlib.models.checkpoints import load_state_dict
from rftlib.cli import main as rft
from rftlib.errors import CheckpointError
from rftlib.models.factory import OPENAI_MARKERS, is_openai_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated, still read


class _TinyOpenAI(nn.Module):
    """A tiny stand-in for OpenAI's scripted CLIP: a layer and the marker tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_torchscript_round_trip_keeps_the_openai_markers(tmp_path, capsys):
    torch.manual_seed(0)
    scripted = torch.jit.script(_TinyOpenAI())
    src, dst = tmp_path / "ViT-tiny.pt", tmp_path / "vit-tiny.safetensors"
    torch.jit.save(scripted, str(src))
    with pytest.raises(CheckpointError, match=r"rft convert-openai IN\.pt OUT\.safetensors"):
        load_state_dict(src)  # the refusal names the command this module provides
    assert rft(["convert-openai", str(src), str(dst)]) == 0
    assert "OpenAI markers kept" in capsys.readouterr().out
    got = load_state_dict(dst)
    want = scripted.state_dict()
    assert set(got) == set(want) and set(OPENAI_MARKERS) <= set(got)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert is_openai_state_dict(got)  # create_clip's quick-GELU guard stays active


def test_bad_input_is_one_line(tmp_path, capsys):
    assert rft(["convert-openai", str(tmp_path / "missing.pt"), str(tmp_path / "out.safetensors")]) == 2
    not_ts = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, not_ts)
    assert rft(["convert-openai", str(not_ts), str(tmp_path / "out.pt")]) == 2
    assert rft(["convert-openai", str(not_ts), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("rft: error: ") for e in err)
    assert "SRC=" in err[0] and "does not exist" in err[0]
    assert "DEST=" in err[1] and ".safetensors" in err[1]
    assert "not a readable TorchScript archive" in err[2]
    assert not (tmp_path / "out.safetensors").exists()
