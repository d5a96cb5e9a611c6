"""The captioned pretraining corpus of a miniature CLIP world.

Each epoch, every training image is drawn in one style (with the world's style probabilities) and
given a caption that names its class and style from several templates. Captions are "web-like":
with probability ``p_coarse`` the class is named only coarsely ("a piece of clothing"), with
probability ``p_wrong`` a random class is named, else a fine-grained synonym. Test images never enter
the corpus.

Example:
    >>> classes = [ClassNames("cat", ["kitty"], ["animal"]), ClassNames("dog", [], ["animal"])]
    >>> import numpy as np
    >>> caps = sample_captions(["photo", "sketch"], np.array([0, 1]), np.array([0, 1]), classes,
    ...                        p_coarse=0.0, p_wrong=0.0, rng=np.random.default_rng(0))
    >>> len(caps), all(isinstance(c, str) for c in caps)
    (2, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from rftlib.errors import ParameterError
from rftlib.worlds.shifts import COLOUR_NAMES, check_styles, render

# Caption templates per style; "{}" is the class name, "{colour}" the tint of the colour style.
STYLE_TEMPLATES: dict[str, list[str]] = {
    "photo": ["a photo of a {}.", "a picture of a {}.", "{}."],
    "inverted": ["an inverted photo of a {}.", "a negative image of a {}."],
    "sketch": ["a sketch of a {}.", "a line drawing of a {}."],
    "rotated": ["a rotated photo of a {}.", "a photo of a {}, turned sideways."],
    "colour": ["a photo of a {colour} {}.", "a {colour} {}."],
    "texture": ["a photo of a {} on a patterned background.", "a {} in front of a striped background."],
    "noisy": ["a noisy photo of a {}.", "a grainy photo of a {}."],
    "blurry": ["a blurry photo of a {}.", "an out of focus photo of a {}."],
    "small": ["a photo of a small {}.", "a small {} in the corner of the picture."],
    "pixelated": ["a pixelated photo of a {}.", "a low resolution picture of a {}."],
    "silhouette": ["a silhouette of a {}.", "the shape of a {} in black."],
    "lowres": ["a low resolution photo of a {}.", "a tiny, upscaled picture of a {}."],
}


@dataclass
class ClassNames:
    """A class's canonical name, fine-grained synonyms and coarse names."""

    name: str
    synonyms: list[str] = field(default_factory=list)
    coarse: list[str] = field(default_factory=list)

    @property
    def fine(self) -> list[str]:
        return [self.name, *self.synonyms]


def zero_shot_templates(styles: Sequence[str]) -> list[str]:
    """The first template of each style that has no extra slot (the zero-shot prompt set).

    Example:
        >>> zero_shot_templates(["photo", "colour", "sketch"])
        ['a photo of a {}.', 'a sketch of a {}.']
    """
    out = []
    for s in styles:
        t = next((t for t in STYLE_TEMPLATES[s] if "{colour}" not in t), None)
        if t is not None:
            out.append(t)
    return out


def sample_captions(styles: Sequence[str], style_idx: np.ndarray, labels: np.ndarray,
                    classes: Sequence[ClassNames], p_coarse: float, p_wrong: float,
                    rng: np.random.Generator, variants: np.ndarray | None = None) -> list[str]:
    """One caption per image, from its style, (noisy) class name and template."""
    if not (0 <= p_coarse and 0 <= p_wrong and p_coarse + p_wrong <= 1):
        raise ParameterError(f"caption noise p_coarse={p_coarse}, p_wrong={p_wrong}: each must be >= 0 and their sum <= 1.")
    n = len(labels)
    u = rng.random(n)
    wrong_cls = rng.integers(0, len(classes), n)
    pick = rng.random(n)
    tpick = rng.random(n)
    caps = []
    for i in range(n):
        c = classes[int(labels[i])]
        if u[i] < p_wrong:
            names = classes[int(wrong_cls[i])].fine
        elif u[i] < p_wrong + p_coarse and c.coarse:
            names = c.coarse
        else:
            names = c.fine
        name = names[int(pick[i] * len(names))]
        templates = STYLE_TEMPLATES[styles[int(style_idx[i])]]
        t = templates[int(tpick[i] * len(templates))]
        if "{colour}" in t:
            colour = COLOUR_NAMES[int(variants[i])] if variants is not None else "coloured"
            t = t.replace("{colour}", colour)
        caps.append(t.format(name))
    return caps


class TokenCache:
    """Tokenizes each distinct caption once (captions repeat a lot)."""

    def __init__(self, tokenizer: Callable) -> None:
        self.tokenizer = tokenizer
        self.ids: dict[str, int] = {}
        self.rows: list[torch.Tensor] = []

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.ids]
        if new:
            toks = self.tokenizer(new)
            for c, row in zip(new, toks):
                self.ids[c] = len(self.rows)
                self.rows.append(row)
        table = torch.stack(self.rows)
        return table[torch.tensor([self.ids[c] for c in captions])]


def render_corpus(images: torch.Tensor, labels: torch.Tensor, style_probs: dict[str, float],
                  classes: Sequence[ClassNames], p_coarse: float, p_wrong: float,
                  seed: int, chunk: int = 8192) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """One epoch of the corpus: RGB images, captions, and each image's style index."""
    styles = check_styles(list(style_probs))
    probs = np.array([style_probs[s] for s in styles], dtype=float)
    if (probs < 0).any() or probs.sum() <= 0:
        raise ParameterError(f"style probabilities must be >= 0 with a positive sum, got {style_probs}.")
    probs = probs / probs.sum()
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    style_idx = rng.choice(len(styles), size=n, p=probs)
    out = torch.empty(n, 3, *images.shape[-2:])
    variants = np.zeros(n, dtype=np.int64)
    for s, name in enumerate(styles):
        idx = np.flatnonzero(style_idx == s)
        for j in range(0, len(idx), chunk):
            sel = torch.from_numpy(idx[j:j + chunk])
            rendered, var = render(images[sel], name, g)
            out[sel] = rendered
            if var is not None:
                variants[sel.numpy()] = var.numpy()
    caps = sample_captions(styles, style_idx, labels.numpy(), classes, p_coarse, p_wrong, rng, variants)
    return out, caps, style_idx
