"""Minimal model building blocks for :class:`dassl.engine.SimpleNet`.

Only the registries and the MLP head are provided: the CLIP trainers build their own models. Register a backbone
(a :class:`Backbone` subclass, or a function returning one) to use ``SimpleNet``::

    @BACKBONE_REGISTRY.register()
    def tiny_cnn(pretrained=True, **kwargs):
        return TinyCNN()   # a Backbone whose `out_features` is the feature size
"""
import torch.nn as nn

from dassl.utils import Registry, check_availability

__all__ = ["BACKBONE_REGISTRY", "HEAD_REGISTRY", "Backbone", "build_backbone", "build_head"]

BACKBONE_REGISTRY = Registry("BACKBONE")
HEAD_REGISTRY = Registry("HEAD")


class Backbone(nn.Module):
    """A feature extractor; subclasses set ``self._out_features`` (the feature size) in ``__init__``."""

    def __init__(self):
        super().__init__()

    def forward(self):
        pass

    @property
    def out_features(self):
        """Output feature dimension (``None`` if not set)."""
        if self.__dict__.get("_out_features") is None:
            return None
        return self._out_features


def build_backbone(name, verbose=True, **kwargs):
    """Build the backbone registered as ``name``."""
    check_availability(name, BACKBONE_REGISTRY.registered_names())
    if verbose:
        print("Backbone: {}".format(name))
    return BACKBONE_REGISTRY.get(name)(**kwargs)


def build_head(name, verbose=True, **kwargs):
    """Build the head registered as ``name`` (``mlp`` is built in)."""
    check_availability(name, HEAD_REGISTRY.registered_names())
    if verbose:
        print("Head: {}".format(name))
    return HEAD_REGISTRY.get(name)(**kwargs)


class MLP(nn.Module):
    """Linear layers (each optionally followed by BatchNorm, activation and dropout)."""

    def __init__(self, in_features=2048, hidden_layers=(), activation="relu", bn=True, dropout=0.0):
        super().__init__()
        if isinstance(hidden_layers, int):
            hidden_layers = [hidden_layers]
        assert len(hidden_layers) > 0
        self.out_features = hidden_layers[-1]
        act_fn = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}[activation]
        layers = []
        for hidden_dim in hidden_layers:
            layers.append(nn.Linear(in_features, hidden_dim))
            if bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(act_fn())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = hidden_dim
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        return self.mlp(x)


@HEAD_REGISTRY.register()
def mlp(**kwargs):
    return MLP(**kwargs)
