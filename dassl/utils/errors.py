"""Errors caused by the user's input (a path, a name, a config key), as opposed to bugs.

Command-line entry points catch :class:`UserError` and print ``error: <message>`` on one line with exit status 2
instead of a traceback. Raise it (or a subclass) wherever the fix is on the user's side, and say in the message
which path or value is wrong and what to do about it.
"""

__all__ = ["UserError", "CheckpointNotFoundError", "UnknownNameError", "BadFileError", "UntrustedFileError"]


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """A checkpoint file is missing (also a ``FileNotFoundError``, as in the original Dassl)."""


class UnknownNameError(UserError, ValueError):
    """A name (trainer, dataset, evaluator, ...) is not registered (also a ``ValueError``, as in Dassl)."""


class BadFileError(UserError, ValueError):
    """A file exists but cannot be used (empty, truncated, corrupt, another format, or not what it should hold).

    The message names the file and what to do; it never suggests loading an untrusted pickle.
    """


class UntrustedFileError(BadFileError):
    """A checkpoint asks to import Python objects (functions, classes) that the safe loader does not admit.

    ``names`` lists them (``module.name``). Loading such a file could run any code, so it is refused unless the
    user has named it as trusted (see :func:`dassl.utils.load_checkpoint`).
    """

    def __init__(self, message, names=()):
        super().__init__(message)
        self.names = list(names)
