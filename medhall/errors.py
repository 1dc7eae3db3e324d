"""The one base of medhall's own errors that a user can act on.

A :class:`MedhallError` says what went wrong and what to do in its message; the command prints
it as ``error: ...`` in a line or two, with no traceback (``--debug`` shows one). Each module
keeps its own subclass (``EvalError``, ``StoreError``, ``TrainError``...), also deriving from
the built-in it has always been (``RuntimeError``, ``ValueError``), so callers catching those
still do.
"""

from __future__ import annotations


class MedhallError(Exception):
    """A problem the user can act on, explained in the message."""


__all__ = ["MedhallError"]
