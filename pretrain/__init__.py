"""Models the project pretrains itself: the tiny CLIP of the offline demo (:mod:`pretrain.tiny_digits`) and its
synthetic training data (:mod:`pretrain.synthetic`)."""

import clip as _clip


def _tiny_digits(root):
    """The offline demo's CLIP: shipped in ``pretrain/weights/``, rebuilt into the cache if absent or damaged."""
    from .tiny_digits import checkpoint_path

    return checkpoint_path(root)


#: ``clip.load("tiny-digits")`` works once this package is imported (``import trainers`` does it).
_clip.register_pretrained("tiny-digits", builder=_tiny_digits)
