"""The error type for problems with the user's data, usable on this project's engine and on the real Dassl.

On this project's ``dassl`` it is ``dassl.utils.UserError``, which ``train.py`` prints as one ``error:`` line;
the real Dassl.pytorch has no such class, so there it is a plain exception with the same message.
"""
try:
    from dassl.utils import UserError
except ImportError:  # the real Dassl.pytorch
    class UserError(Exception):
        """A problem with the user's input, explained by the message."""

__all__ = ["UserError"]
