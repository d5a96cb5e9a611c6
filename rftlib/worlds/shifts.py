"""Named, seeded distribution shifts ("styles") that render grayscale images as RGB pictures.

A style maps ``N×H×W`` images (uint8 0..255 or float in [0, 1]) to ``N×3×H×W`` float images in
[0, 1]. Randomness (angles, colours, noise) comes only from the ``generator`` passed in, so the
same seed renders the same pictures. Styles in the miniature worlds:

======================  ====================================================================
``photo``               the clean image (the in-distribution style)
``inverted``            ``1 − x``
``sketch``              edges (Sobel magnitude of a blurred image) drawn dark on white
``rotated``             rotated by ±15–45°
``colour``              the item tinted with one of 8 named colours (the variant index)
``texture``             the item composited on random stripes or a checkerboard
``noisy``               Gaussian pixel noise, σ = 0.25
``blurry``              Gaussian blur, σ = 1.6
``small``               shrunk to 60–80 % and moved
``pixelated``           4×4 average pooling, then nearest upsampling
``silhouette``          the item's shape, black on white
``lowres``              down to 8×8 and back up bilinearly (a low-resolution camera)
======================  ====================================================================

Example:
    >>> import torch
    >>> x = torch.zeros(2, 28, 28, dtype=torch.uint8); x[:, 10:18, 10:18] = 255
    >>> g = torch.Generator().manual_seed(0)
    >>> y, variant = render(x, "inverted", g)
    >>> y.shape, float(y[0, 0, 0, 0]), float(y[0, 0, 14, 14])
    (torch.Size([2, 3, 28, 28]), 1.0, 0.0)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from rftlib.errors import ParameterError

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.3, 0.95), "yellow": (0.95, 0.85, 0.1),
    "purple": (0.6, 0.2, 0.8), "orange": (1.0, 0.55, 0.05), "cyan": (0.1, 0.85, 0.9), "pink": (1.0, 0.5, 0.75),
}
COLOUR_NAMES = list(COLOURS)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 → float [0, 1]; float input is returned as float32."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``N×H×W`` images (reflect padding)."""
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    y = x.unsqueeze(1)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return y.squeeze(1)


def _affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate (radians), scale and shift (fraction of the size) each image; background 0."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, -shift[:, 0]], 1), torch.stack([sin, cos, -shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], 1, *x.shape[-2:]], align_corners=False)
    return F.grid_sample(x.unsqueeze(1), grid, align_corners=False, padding_mode="zeros").squeeze(1)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def photo(x, g):
    return _rgb(x), None


def inverted(x, g):
    return _rgb(1.0 - x), None


def sketch(x, g):
    b = blur(x, 0.7).unsqueeze(1)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(b, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(b, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = (gx**2 + gy**2).sqrt().squeeze(1)
    mag = mag / mag.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    return _rgb(1.0 - (1.6 * mag).clamp(0, 1)), None


def rotated(x, g):
    n = x.shape[0]
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    angle = sign * _uniform(n, 15, 45, g) * math.pi / 180
    return _rgb(_affine(x, angle, torch.ones(n), torch.zeros(n, 2))), None


def colour(x, g):
    idx = torch.randint(len(COLOURS), (x.shape[0],), generator=g)
    rgb = torch.tensor(list(COLOURS.values()))[idx].view(-1, 3, 1, 1)
    return x.unsqueeze(1) * rgb, idx


def texture(x, g):
    n, h, w = x.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ang = _uniform(n, 0, math.pi, g).view(-1, 1, 1)
    freq = _uniform(n, 0.35, 0.9, g).view(-1, 1, 1)
    stripes = (torch.sin(freq * (xx * torch.cos(ang) + yy * torch.sin(ang))) > 0).float()
    cell = torch.randint(3, 6, (n,), generator=g).view(-1, 1, 1).float()
    checker = ((torch.div(xx, cell, rounding_mode="floor") + torch.div(yy, cell, rounding_mode="floor")) % 2 == 0).float()
    use_stripes = (torch.rand(n, generator=g) < 0.6).view(-1, 1, 1).float()
    pattern = use_stripes * stripes + (1 - use_stripes) * checker
    c1, c2 = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    bg = c1 * pattern.unsqueeze(1) + c2 * (1 - pattern.unsqueeze(1))
    a = (4 * x).clamp(0, 1).unsqueeze(1)
    return a * _rgb(x) + (1 - a) * bg, None


def noisy(x, g):
    return _rgb((x + 0.25 * torch.randn(x.shape, generator=g)).clamp(0, 1)), None


def blurry(x, g):
    return _rgb(blur(x, 1.6)), None


def small(x, g):
    n = x.shape[0]
    scale = _uniform(n, 0.6, 0.8, g)
    room = (1 - scale).unsqueeze(1)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * room
    return _rgb(_affine(x, torch.zeros(n), scale, shift)), None


def pixelated(x, g):
    h, w = x.shape[-2:]
    y = F.avg_pool2d(x.unsqueeze(1), 4, ceil_mode=True)
    return _rgb(F.interpolate(y, size=(h, w), mode="nearest").squeeze(1)), None


def silhouette(x, g):
    return _rgb(1.0 - (x > 0.06).float()), None


def lowres(x, g):
    h, w = x.shape[-2:]
    y = F.interpolate(x.unsqueeze(1), size=(8, 8), mode="area")
    return _rgb(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1)), None


STYLES: dict[str, Callable] = {
    f.__name__: f
    for f in (photo, inverted, sketch, rotated, colour, texture, noisy, blurry, small, pixelated, silhouette, lowres)
}


def check_styles(names) -> list[str]:
    """Validate style names (clear error listing the known styles)."""
    names = [names] if isinstance(names, str) else list(names)
    bad = [s for s in names if s not in STYLES]
    if bad:
        raise ParameterError(f"unknown style(s) {bad}; known styles: {list(STYLES)}.")
    return names


def render(x: torch.Tensor, style: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Render ``N×H×W`` images in ``style``: returns RGB float images and the variant index
    (the colour of ``colour``; ``None`` for other styles)."""
    check_styles(style)
    out, variant = STYLES[style](to_float(x), generator)
    return out.clamp(0, 1).contiguous(), variant


def render_split(x: torch.Tensor, style: str, seed: int) -> torch.Tensor:
    """A fixed evaluation split: ``x`` rendered in ``style`` with its own seed.

    Example:
        >>> import torch
        >>> x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
        >>> torch.equal(render_split(x, "noisy", 3), render_split(x, "noisy", 3))
        True
    """
    return render(x, style, torch.Generator().manual_seed(seed))[0]


def upscale_to(x: torch.Tensor, size: int, box: int | None = None) -> torch.Tensor:
    """Resize ``N×h×w`` images into a ``box``×``box`` area centred in a ``size``×``size`` canvas
    (MNIST's layout: digits fill a 20×20 box in 28×28). Returns uint8 if given uint8.

    Example:
        >>> import torch
        >>> upscale_to(torch.full((1, 8, 8), 255, dtype=torch.uint8), 28, 20).shape
        torch.Size([1, 28, 28])
    """
    box = box or size
    xf = to_float(x).unsqueeze(1)
    y = F.interpolate(xf, size=(box, box), mode="bilinear", align_corners=False).squeeze(1)
    pad = (size - box) // 2
    y = F.pad(y, (pad, size - box - pad, pad, size - box - pad))
    return (y.clamp(0, 1) * 255).round().to(torch.uint8) if x.dtype == torch.uint8 else y
