"""CLIP models through open_clip, a registry of tiny configs, and WiSE-FT's image classifier.

The image classifier is ``head(normalize(visual(x)))``: the CLIP image tower followed by a linear
head initialized from the zero-shot classifier that open_clip builds from class names and prompt
templates (``open_clip.build_zero_shot_classifier``), scaled by the CLIP logit scale, bias 0. Its
state dict holds only ``visual.*`` and ``head.*`` (no text-tower leftovers), so θ_zs and θ_ft are
two state dicts of the same keys.

The forward pass is a composition of named :class:`Stage` objects (``embed``, ``block0``..,
``post``, ``head`` for vision transformers). A "layer" at block granularity is a stage, and prefix
caching (compute the input of stage ℓ once, then run only stages ℓ..) is exact by construction.

Example:
    >>> import torch
    >>> clip, tok = create_clip("rft-tiny", seed=0)
    >>> clf = build_classifier(clip, tok, ["cat", "dog"], ["a photo of a {}."])
    >>> [s.name for s in clf.stages()]
    ['embed', 'block0', 'block1', 'post', 'head']
    >>> clf(torch.rand(3, 3, 28, 28)).shape
    torch.Size([3, 2])
    >>> sorted({k.split('.')[0] for k in clf.state_dict()})
    ['head', 'visual']
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from rftlib.core.prefix import Stage
from rftlib.models.checkpoints import load_state_dict
from rftlib.errors import CheckpointError, ParameterError

CONFIG_DIR = Path(__file__).parent / "configs"
_REGISTERED = False

# state-dict entries that mark OpenAI's original CLIP format
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")


def register_configs() -> None:
    """Register the package's tiny CLIP configs (``rft-*.json``) with open_clip, once."""
    global _REGISTERED
    if not _REGISTERED:
        open_clip.add_model_config(CONFIG_DIR)
        _REGISTERED = True


def tiny_configs() -> list[str]:
    """Names of the tiny configs shipped with rftlib.

    Example:
        >>> tiny_configs()
        ['rft-mini', 'rft-tiny']
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def check_model_name(name: str) -> None:
    """Raise :class:`ParameterError` unless open_clip knows ``name`` (with close matches in the message)."""
    register_configs()
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5)
        raise ParameterError(
            f"model={name!r} is not an open_clip architecture. Close matches: {close or 'none'}; "
            f"rftlib's tiny configs: {tiny_configs()}; all names: open_clip.list_models()."
        )


def is_openai_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for OpenAI's original CLIP state-dict layout (it carries ``input_resolution`` and friends)."""
    return any(k in state_dict for k in OPENAI_MARKERS)


def create_clip(
    name: str,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    force_quick_gelu: bool = False,
    seed: int | None = None,
) -> tuple[nn.Module, Callable]:
    """Build an open_clip CLIP model and its tokenizer, optionally loading local weights.

    Args:
        name: open_clip architecture, e.g. ``"ViT-B-32-quickgelu"`` or a tiny config ``"rft-mini"``.
        pretrained: a local ``.safetensors`` or weights-only ``.pt`` file (never a download).
        device: where to put the model.
        force_quick_gelu: use QuickGELU activations (needed for OpenAI weights).
        seed: seeds the random initialization when given.

    Raises:
        ParameterError: unknown architecture.
        CheckpointError: unreadable file, mismatched keys or shapes, or OpenAI weights paired with a
            GELU architecture (OpenAI's CLIP uses QuickGELU; the pairing is silently wrong otherwise).
    """
    check_model_name(name)
    state_dict = load_state_dict(pretrained) if pretrained is not None else None
    if state_dict is not None and is_openai_state_dict(state_dict):
        cfg = open_clip.get_model_config(name) or {}
        if not (cfg.get("quick_gelu", False) or force_quick_gelu):
            raise CheckpointError(
                f"{Path(pretrained).name} holds OpenAI CLIP weights, which need QuickGELU, but model={name!r} "
                f"uses GELU: results would be silently wrong. Use model='{name}-quickgelu' "
                "(e.g. 'ViT-B-32-quickgelu') or force_quick_gelu=True."
            )
    if seed is not None:
        torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=force_quick_gelu, device="cpu")
    if state_dict is not None:
        from open_clip.factory import convert_state_dict

        state_dict = {k: v for k, v in state_dict.items() if k not in OPENAI_MARKERS}
        state_dict = convert_state_dict(model, state_dict)
        if "logit_scale" in state_dict and state_dict["logit_scale"].ndim != model.logit_scale.ndim:
            state_dict["logit_scale"] = state_dict["logit_scale"].reshape(model.logit_scale.shape)
        _load_strict(model, state_dict, str(pretrained))
    model.to(device).eval()
    return model, open_clip.get_tokenizer(name)


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{Path(source).name} does not match the architecture: {len(missing)} missing keys "
            f"(first: {missing[:3]}), {len(unexpected)} unexpected keys (first: {unexpected[:3]}). "
            "Check the model name the checkpoint was saved with."
        )
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{Path(source).name}: key {k!r} has shape {tuple(v.shape)}, the architecture expects "
                f"{tuple(own[k].shape)}. Check the model name the checkpoint was saved with."
            )
    model.load_state_dict(state_dict, strict=True)


@torch.no_grad()
def zero_shot_weights(
    clip: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Zero-shot head weights ``(C, D)``: open_clip's classifier (templates averaged, renormalized)
    transposed and scaled by ``logit_scale.exp()``, as in WiSE-FT's ``ClassificationHead``."""
    if len(classnames) == 0 or len(templates) == 0:
        raise ParameterError("zero-shot head needs at least one class name and one template.")
    device = device or next(clip.parameters()).device
    w = open_clip.build_zero_shot_classifier(clip, tokenizer, list(classnames), list(templates), device=device)
    return (clip.logit_scale.exp() * w).T.contiguous()


class ImageClassifier(nn.Module):
    """WiSE-FT's classifier: ``head(normalize(visual(x)))``.

    Args:
        visual: an open_clip image tower.
        head_weight: ``(C, D)`` zero-shot weights (see :func:`zero_shot_weights`).
        input_mean, input_std: per-channel normalization applied to inputs in [0, 1]; ``None``
            when the data pipeline normalizes already (open_clip's preprocess does).
    """

    def __init__(
        self,
        visual: nn.Module,
        head_weight: torch.Tensor,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.visual = visual
        c, d = head_weight.shape
        self.head = nn.Linear(d, c)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.zero_()
        self.normalize_input = input_mean is not None
        if self.normalize_input:
            self.register_buffer("input_mean", torch.tensor(input_mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("input_std", torch.tensor(input_std).view(1, -1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std if self.normalize_input else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized image features (the head's input)."""
        return F.normalize(self.visual(self._prep(x)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x

    def stages(self) -> list[Stage]:
        """The forward pass as named stages; their composition is exactly :meth:`forward`."""
        v = self.visual
        head = Stage("head", self.head, ("head.",))
        if not isinstance(v, open_clip.transformer.VisionTransformer):
            return [Stage("visual", self.features, ("visual.",)), head]
        batch_first = getattr(v.transformer, "batch_first", True)

        def embed(x: torch.Tensor) -> torch.Tensor:
            x = v._embeds(self._prep(x))
            return x if batch_first else x.transpose(0, 1)

        def post(x: torch.Tensor) -> torch.Tensor:
            if not batch_first:
                x = x.transpose(0, 1)
            pooled, _ = v._pool(x)
            if v.proj is not None:
                pooled = pooled @ v.proj
            return F.normalize(pooled, dim=-1)

        blocks = [
            Stage(f"block{i}", (lambda x, b=blk: b(x, attn_mask=None)), (f"visual.transformer.resblocks.{i}.",))
            for i, blk in enumerate(v.transformer.resblocks)
        ]
        post_prefixes = ("visual.ln_post.", "visual.proj", "visual.attn_pool", "visual.attn_pool_contrastive.")
        all_keys = [k for k in self.state_dict() if k.startswith("visual.")]
        taken = [p for s in blocks for p in s.prefixes] + list(post_prefixes)
        embed_keys = tuple(k for k in all_keys if not any(k.startswith(p) for p in taken))
        return [Stage("embed", embed, embed_keys), *blocks, Stage("post", post, post_prefixes), head]


def build_classifier(
    clip: nn.Module,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
) -> ImageClassifier:
    """θ_zs as a module: a deep copy of ``clip.visual`` plus the zero-shot head."""
    w = zero_shot_weights(clip, tokenizer, classnames, templates)
    clf = ImageClassifier(copy.deepcopy(clip.visual), w, input_mean, input_std)
    return clf.to(w.device).eval()


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in module.parameters())
