"""Captioned synthetic digit images: the pretraining data of the tiny CLIP.

Every image is a digit glyph drawn from a font (the TrueType fonts that matplotlib ships in ``mpl-data/fonts/ttf``
plus PIL's default font), never from a handwritten data set. Glyphs are rendered once per (font, digit, stroke
weight) into a bank of masks; each sample then takes one of them through batched torch operations:

1. geometry: rotation, shear, aspect change, scale (the digit's height is 40-100% of the image), translation and
   a smooth random (elastic) displacement, in one ``grid_sample``;
2. acquisition: with some probability an area downsampling to 6-16 pixels, optional 17-level quantisation and an
   upsampling back (nearest, bilinear or bicubic), the way small scans and thumbnails look;
3. a Gaussian blur of random width;
4. colour: ink and background colours (dark on light, light on dark, or any two colours of different
   brightness), a smooth background shading, and pixel noise.

Captions come from :data:`TEMPLATES`, filled with either the digit's word ("seven") or its numeral ("7").

Everything random comes from one ``torch.Generator`` seeded by the caller, so a generator built with the same
seed yields the same batches (on the same torch version and thread count).

>>> gen = SyntheticDigits(seed=0)
>>> images, digits, captions = gen.batch(8)      # (8, 3, 32, 32) in [0, 1], (8,), list of 8 strings
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from datasets.digits import CLASSNAMES as DIGIT_WORDS  # "zero" .. "nine", the dataset's class names

# "{}" is filled with the word ("seven") or the numeral ("7"), each half of the time.
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the number {}.",
    "a photo of the digit {}.",
    "a handwritten {}.",
    "a handwritten number {}.",
    "a handwritten digit {}.",
    "a drawing of a {}.",
    "a drawing of the number {}.",
    "a picture of a {}.",
    "an image of the digit {}.",
    "a scan of a handwritten {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of the number {}.",
    "a pixelated image of a {}.",
    "a close-up photo of a {}.",
    "a printed {}.",
    "the number {}.",
    "the digit {}.",
    "a {}.",
    "{}.",
    "the number {} written in ink.",
    "a sketch of the digit {}.",
    "a rendering of the number {}.",
    "a black and white photo of a {}.",
)

# Fonts from matplotlib's mpl-data/fonts/ttf whose digit glyphs are real digits (the STIX size/non-unicode
# variants, cmex10, cmsy10, LastResortHE and the *Display fonts draw symbols or nothing for "0".."9").
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf", "cmmi10.ttf",
)

GLYPH_PX = 48          # side of a glyph mask in the bank; the glyph's height fills it
_RENDER_PT = 64        # font size used to draw a glyph before it is cropped and resized to GLYPH_PX
# Stroke weights: negative = thinned by a min filter of that size, positive = PIL's stroke_width at _RENDER_PT.
STROKE_WEIGHTS = (-3, 0, 2, 4)


def matplotlib_font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def fonts() -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """(name, font) for every font used: matplotlib's digit fonts that are present, then PIL's default font."""
    folder = matplotlib_font_dir()
    found = [(name, ImageFont.truetype(os.path.join(folder, name), _RENDER_PT))
             for name in FONT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not found:
        raise FileNotFoundError(f"none of matplotlib's fonts were found in {folder}")
    return found + [("PIL-default", ImageFont.load_default(_RENDER_PT))]


def _render_glyph(font: ImageFont.FreeTypeFont, digit: int, weight: int, crossbar: bool = False) -> np.ndarray:
    """The digit as a GLYPH_PX x GLYPH_PX uint8 mask (255 = ink): height fills the square, centred horizontally.

    ``crossbar`` draws a horizontal bar through the middle of the glyph, as many people cross a handwritten 7.
    """
    canvas = 3 * _RENDER_PT
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    stroke = max(weight, 0)
    draw.text((_RENDER_PT, _RENDER_PT // 2), str(digit), font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    box = img.getbbox()
    if box is None:
        raise ValueError(f"font {font.getname()} draws nothing for {digit}")
    if crossbar:
        left, top, right, bottom = box
        y = top + 0.55 * (bottom - top)
        half = (_RENDER_PT * 0.08 + 2 * stroke) / 2
        draw.rectangle((left + 0.2 * (right - left), y - half, right - 0.05 * (right - left), y + half), fill=255)
    if weight < 0:
        img = img.filter(ImageFilter.MinFilter(-weight))
    img = img.crop(img.getbbox())
    w, h = img.size
    scale = GLYPH_PX / max(w, h)
    w2, h2 = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((w2, h2), Image.LANCZOS)
    out = Image.new("L", (GLYPH_PX, GLYPH_PX), 0)
    out.paste(img, ((GLYPH_PX - w2) // 2, (GLYPH_PX - h2) // 2))
    return np.asarray(out)


def glyph_bank() -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (N, 1, GLYPH_PX, GLYPH_PX) and digits (N,) for every (font, digit, stroke weight).

    Sevens come twice, plain and crossed, so half of the sevens drawn are crossed.
    """
    masks, digits = [], []
    for _, font in fonts():
        for digit in range(10):
            for crossbar in ((False, True) if digit == 7 else (False,)):
                for weight in STROKE_WEIGHTS:
                    masks.append(_render_glyph(font, digit, weight, crossbar))
                    digits.append(digit)
    return torch.from_numpy(np.stack(masks))[:, None] / 255, torch.tensor(digits)


def caption(template: int, digit: int, numeral: bool) -> str:
    return TEMPLATES[template].format(str(digit) if numeral else DIGIT_WORDS[digit])


class SyntheticDigits:
    """An endless, seeded stream of (image, digit, caption) batches.

    Args:
        seed: seeds the generator's own ``torch.Generator``; the same seed gives the same stream.
        image_size: side of the square RGB images.
        lowres_prob: probability of the downsample-then-upsample acquisition step.

    Output of :meth:`batch(n)`: images (n, 3, image_size, image_size) float32 in [0, 1], digits (n,) int64,
    captions (list of n strings).
    """

    def __init__(self, seed: int = 0, image_size: int = 32, lowres_prob: float = 0.6, difficulty: float = 1.0):
        self.image_size = image_size
        self.lowres_prob = lowres_prob
        self.difficulty = difficulty  # 0: large, upright, clean, grey digits; 1: the full ranges below
        self.masks, self.mask_digits = glyph_bank()
        self.by_digit = [torch.nonzero(self.mask_digits == d).flatten() for d in range(10)]
        self.generator = torch.Generator().manual_seed(seed)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * self._rand(n)

    def _randint(self, n: int, hi: int) -> torch.Tensor:
        return torch.randint(hi, (n,), generator=self.generator)

    def batch(self, n: int, images: bool = True) -> tuple[Optional[torch.Tensor], torch.Tensor, list[str]]:
        """``n`` samples: images (or None when ``images`` is False), digits and captions."""
        digits = self._randint(n, 10)
        templates = self._randint(n, len(TEMPLATES)).tolist()
        numerals = (self._rand(n) < 0.5).tolist()
        captions = [caption(t, d, u) for t, d, u in zip(templates, digits.tolist(), numerals)]
        if not images:
            return None, digits, captions
        glyphs = torch.stack([self.by_digit[d][self._randint(1, len(self.by_digit[d]))[0]] for d in digits.tolist()])
        mask = self._geometry(self.masks[glyphs])
        mask = self._acquisition(mask)
        mask = self._blur(mask, self._uniform(n, 0.0, 1.0) * (self._rand(n) < 0.5 * self.difficulty))
        return self._colour(mask), digits, captions

    def _geometry(self, glyphs: torch.Tensor) -> torch.Tensor:
        """Place each glyph with a random affine map plus a smooth random displacement field."""
        n, size = glyphs.shape[0], self.image_size
        d = self.difficulty
        angle = self._uniform(n, -20, 20) * (d * math.pi / 180)
        shear = self._uniform(n, -0.3, 0.3) * d
        aspect = torch.exp(self._uniform(n, -0.35, 0.35) * d)
        height = torch.where(self._rand(n) < 0.5, self._uniform(n, 0.75, 1.0), self._uniform(n, 0.75 - 0.35 * d, 0.75))
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
        sh = torch.eye(2).repeat(n, 1, 1)
        sh[:, 0, 1] = shear
        stretch = torch.diag_embed(torch.stack([aspect, 1 / aspect], -1))
        # Glyph space [-1, 1]^2 (the glyph's height fills it) -> output space, where the image is [-1, 1]^2.
        forward = height[:, None, None] * rot @ sh @ stretch
        room = (1 - height).clamp(min=0.05)
        centre = torch.stack([self._uniform(n, -1, 1) * room, self._uniform(n, -1, 1) * room * 0.8], -1)
        inverse = torch.linalg.inv(forward)
        theta = torch.cat([inverse, -(inverse @ centre[:, :, None])], -1)
        grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
        amplitude = self._uniform(n, 0.0, 0.12 * d)[:, None, None, None]
        field = torch.randn(n, 2, 4, 4, generator=self.generator) * amplitude
        field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)
        return F.grid_sample(glyphs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _acquisition(self, mask: torch.Tensor) -> torch.Tensor:
        """Downsample by area averaging to a few pixels, maybe quantise, and upsample back."""
        n, size = mask.shape[0], self.image_size
        apply = (self._rand(n) < self.lowres_prob * self.difficulty).tolist()
        low = (6 + self._randint(n, 11)).tolist()  # 6..16 pixels
        modes = self._randint(n, 3).tolist()
        quantise = (self._rand(n) < 0.5).tolist()
        out = mask.clone()
        for i in range(n):
            if not apply[i]:
                continue
            x = F.interpolate(mask[i:i + 1], size=(low[i], low[i]), mode="area")
            if quantise[i]:
                x = torch.round(x * 16) / 16
            mode = ("nearest", "bilinear", "bicubic")[modes[i]]
            kwargs = {} if mode == "nearest" else {"align_corners": False}
            out[i:i + 1] = F.interpolate(x, size=(size, size), mode=mode, **kwargs).clamp(0, 1)
        return out

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample Gaussian blur (sigma 0 leaves the sample unchanged)."""
        n, c, h, w = x.shape
        r = 3
        t = torch.arange(-r, r + 1).to(x.dtype)
        k1 = torch.exp(-t[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)
        kernel = (k1[:, :, None] * k1[:, None, :])[:, None].repeat_interleave(c, 0)
        y = F.conv2d(F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate"), kernel, groups=n * c)
        return y.reshape(n, c, h, w)

    def _colour(self, mask: torch.Tensor) -> torch.Tensor:
        """Ink and background colours, a smooth background shading and pixel noise."""
        n, _, h, w = mask.shape
        style = self._rand(n)
        grey_paper = style < 1 - 0.45 * self.difficulty  # dark ink on light paper
        grey_dark = (style >= 1 - 0.45 * self.difficulty) & (style < 1 - 0.3 * self.difficulty)  # light on dark
        light = self._uniform(n, 0.75, 1.0)[:, None].expand(n, 3)
        dark = self._uniform(n, 0.0, 0.3)[:, None].expand(n, 3)
        ink = torch.where(grey_paper[:, None], dark, light)
        ground = torch.where(grey_paper[:, None], light, dark)
        # Any two colours whose brightness differs by at least 0.3.
        ink_c, ground_c = self._rand(n, 3), self._rand(n, 3)
        luma = torch.tensor([0.299, 0.587, 0.114])
        gap = (ink_c @ luma) - (ground_c @ luma)
        push = ((0.3 - gap.abs()).clamp(min=0) / 2 * torch.where(gap >= 0, 1.0, -1.0))[:, None]
        ink_c, ground_c = (ink_c + push).clamp(0, 1), (ground_c - push).clamp(0, 1)
        colour = ~(grey_paper | grey_dark)
        ink = torch.where(colour[:, None], ink_c, ink)
        ground = torch.where(colour[:, None], ground_c, ground)
        shade = F.interpolate(torch.randn(n, 1, 2, 2, generator=self.generator), size=(h, w), mode="bilinear",
                              align_corners=True) * self._uniform(n, 0.0, 0.1)[:, None, None, None]
        img = ground[:, :, None, None] * (1 - mask) + ink[:, :, None, None] * mask + shade
        noise = torch.randn(n, 3, h, w, generator=self.generator) * self._uniform(n, 0.0, 0.06)[:, None, None, None]
        return (img + noise).clamp(0, 1)
