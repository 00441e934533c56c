"""OpenAI's image preprocessing for CLIP."""
from __future__ import annotations

__all__ = ["image_transform", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_rgb(image):
    return image.convert("RGB")


def image_transform(n_px: int, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation: str = "bicubic",
                    resize_mode: str = "shortest"):
    """PIL image -> normalised ``(3, n_px, n_px)`` tensor, RGB.

    ``resize_mode="shortest"`` (OpenAI, and open_clip's default): resize the short side to ``n_px``, center crop;
    ``"squash"``: resize both sides to ``n_px`` (aspect ratio not kept). ``interpolation``: ``"bicubic"``,
    ``"bilinear"`` or ``"nearest"``.
    """
    from torchvision import transforms as T  # imported on first use: keeps `import clip` light

    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST}
    if interpolation not in modes:
        raise ValueError(f"interpolation {interpolation!r}: choose one of {', '.join(modes)}")
    if resize_mode == "shortest":
        resize = [T.Resize(n_px, interpolation=modes[interpolation]), T.CenterCrop(n_px)]
    elif resize_mode == "squash":
        resize = [T.Resize((n_px, n_px), interpolation=modes[interpolation])]
    else:
        raise ValueError(f"resize_mode {resize_mode!r}: choose 'shortest' or 'squash'")
    return T.Compose([*resize, _to_rgb, T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
