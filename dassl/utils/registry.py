"""Name -> object registries (``dassl.utils.registry``)."""

__all__ = ["Registry"]


class Registry:
    """A named mapping from names to classes or functions, filled with a decorator.

    Example::

        BACKBONE_REGISTRY = Registry("BACKBONE")

        @BACKBONE_REGISTRY.register()
        class MyBackbone(nn.Module): ...

        BACKBONE_REGISTRY.get("MyBackbone")
        BACKBONE_REGISTRY.registered_names()  # ['MyBackbone']

    A name can be registered once; registering it again raises ``KeyError`` unless ``force=True``.
    """

    def __init__(self, name):
        self._name = name
        self._obj_map = dict()

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(
                'An object named "{}" was already registered in "{}" registry '
                "(pick another name, or pass force=True to replace it)".format(name, self._name)
            )
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        """Register ``obj`` under its ``__name__``; without ``obj``, return a decorator that does so."""
        if obj is None:

            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        """Return the object registered as ``name``; ``KeyError`` if there is none."""
        if name not in self._obj_map:
            raise KeyError(
                'Object name "{}" does not exist in "{}" registry (registered: {})'.format(
                    name, self._name, self.registered_names()
                )
            )
        return self._obj_map[name]

    def registered_names(self):
        """Names in registration order."""
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map

    def __iter__(self):
        return iter(self.registered_names())

    def __len__(self):
        return len(self._obj_map)

    def __repr__(self):
        return "Registry(name={!r}, names={})".format(self._name, self.registered_names())
