"""OpenAI's image preprocessing for CLIP."""
from __future__ import annotations

__all__ = ["image_transform", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_rgb(image):
    return image.convert("RGB")


def image_transform(n_px: int):
    """PIL image -> normalised ``(3, n_px, n_px)`` tensor: bicubic resize of the short side, center crop, RGB."""
    from torchvision import transforms as T  # imported on first use: keeps `import clip` light

    return T.Compose([
        T.Resize(n_px, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(n_px),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])
