"""Models the project pretrains itself: the tiny CLIP of the offline demo (:mod:`pretrain.tiny_digits`), its larger
teacher for CasPL's distillation (:mod:`pretrain.tiny_digits_large`), and their synthetic training data
(:mod:`pretrain.synthetic`)."""

import clip as _clip


def _tiny_digits(root):
    """The offline demo's CLIP: shipped in ``pretrain/weights/``, rebuilt into the cache if absent or damaged."""
    from .tiny_digits import checkpoint_path

    return checkpoint_path(root)


def _tiny_digits_large(root):
    """The demo's senior teacher (larger than tiny-digits): shipped, or rebuilt into the cache like tiny-digits."""
    from .tiny_digits_large import checkpoint_path

    return checkpoint_path(root)


#: ``clip.load("tiny-digits")`` and ``clip.load("tiny-digits-large")`` work once this package is imported
#: (``import trainers`` does it).
_clip.register_pretrained("tiny-digits", builder=_tiny_digits)
_clip.register_pretrained("tiny-digits-large", builder=_tiny_digits_large)
