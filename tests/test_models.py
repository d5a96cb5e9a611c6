"""Models: tiny registry, zero-shot head against open_clip, stages, safe loading, quick-GELU guard."""

import pickle

import open_clip
import pytest
import torch
import torch.nn.functional as F

from rftlib.models.checkpoints import load_state_dict, save_state_dict
from rftlib.errors import CheckpointError, ParameterError
from rftlib.models.factory import ImageClassifier, build_classifier, create_clip, tiny_configs


def test_tiny_configs_are_registered():
    create_clip("rft-tiny", seed=0)
    assert {"rft-tiny", "rft-mini"} <= set(open_clip.list_models())
    assert tiny_configs() == ["rft-mini", "rft-tiny"]


def test_unknown_model_name_suggests():
    with pytest.raises(ParameterError, match="rft-tiny"):
        create_clip("rft-tinny")


def test_zero_shot_head_matches_open_clip(tiny_clip):
    clip, tok = tiny_clip
    names, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a sketch of a {}."]
    clf = build_classifier(clip, tok, names, templates)
    x = torch.rand(5, 3, 28, 28)
    with torch.no_grad():
        w = open_clip.build_zero_shot_classifier(clip, tok, names, templates)
        ref = clip.logit_scale.exp() * clip.encode_image(x, normalize=True) @ w
        ours = clf(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert set(k.split(".")[0] for k in clf.state_dict()) == {"visual", "head"}
    assert torch.count_nonzero(clf.head.bias) == 0


def test_stages_compose_to_forward(tiny_classifier):
    x = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        h = x
        for s in tiny_classifier.stages():
            h = s(h)
        ref = tiny_classifier.head(tiny_classifier.features(x))
    torch.testing.assert_close(h, ref)


def test_input_normalization_is_not_in_state_dict(tiny_clip):
    clip, tok = tiny_clip
    clf = build_classifier(clip, tok, ["a", "b"], ["{}"], (0.5,) * 3, (0.25,) * 3)
    assert not any("input_" in k for k in clf.state_dict())
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        ref = F.normalize(clf.visual((x - 0.5) / 0.25), dim=-1) @ clf.head.weight.T
    torch.testing.assert_close(clf(x), ref)


def test_checkpoint_roundtrip_and_strict_load(tmp_path, tiny_clip):
    clip, _ = tiny_clip
    p = tmp_path / "clip.safetensors"
    save_state_dict(p, clip.state_dict())
    clip2, _ = create_clip("rft-tiny", pretrained=p)
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), clip2.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not match|shape"):
        create_clip("rft-mini", pretrained=p)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_pickle_with_code(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        torch.save({"w": torch.zeros(1), "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict(p)


def test_truncated_checkpoint_is_clear(tmp_path, tiny_clip):
    clip, _ = tiny_clip
    p = tmp_path / "clip.safetensors"
    save_state_dict(p, clip.state_dict())
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(p)


def test_openai_weights_need_quick_gelu(tmp_path, tiny_clip):
    clip, _ = tiny_clip
    sd = dict(clip.state_dict())
    sd["input_resolution"] = torch.tensor(28)
    sd["context_length"] = torch.tensor(20)
    sd["vocab_size"] = torch.tensor(49408)
    p = tmp_path / "openai-format.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match="QuickGELU"):
        create_clip("rft-tiny", pretrained=p)
    m, _ = create_clip("rft-tiny", pretrained=p, force_quick_gelu=True)
    assert torch.equal(m.visual.proj, clip.visual.proj)
