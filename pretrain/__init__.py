"""Models the project pretrains itself: the tiny CLIP of the offline demo (:mod:`pretrain.tiny_digits`) and its
synthetic training data (:mod:`pretrain.synthetic`)."""
