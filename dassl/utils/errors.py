"""Errors caused by the user's input (a path, a name, a config key), as opposed to bugs.

Command-line entry points catch :class:`UserError` and print ``error: <message>`` on one line with exit status 2
instead of a traceback. Raise it (or a subclass) wherever the fix is on the user's side, and say in the message
which path or value is wrong and what to do about it.
"""

__all__ = ["UserError", "CheckpointNotFoundError", "UnknownNameError", "BadFileError", "UntrustedFileError",
           "FileWriteError"]


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


class FileWriteError(UserError, OSError):
    """A file could not be written: no space left, a quota, a read-only or vanished folder, no permission.

    Also an ``OSError`` (``errno`` is the one the system reported), so code that tolerates a failed write (a cache
    that is simply not kept) still does. The message says which file, why, and what to do; nothing half-written
    is left behind (:func:`dassl.utils.atomic_write`). ``reason`` and ``fix`` are the two halves of the message:
    :meth:`with_fix` replaces the second (the engine names the epoch a rerun resumes from).
    """

    def __init__(self, reason, fix, path=None, error_number=None):
        super().__init__(error_number, "{}; {}".format(reason, fix))
        self.reason, self.fix, self.path = reason, fix, path

    def __str__(self):
        return "{}; {}".format(self.reason, self.fix)

    def with_fix(self, fix):
        """The same error with another second half (what to do)."""
        return FileWriteError(self.reason, fix, self.path, self.errno)
