"""User-facing errors: each carries a one-line message that says what to do, and an exit status.

The CLI prints ``error: <message>`` for these and exits with ``exit_code``; anything else that
escapes is a bug and is reported as one line too (see ``zoo.cli.main``).

Each class is also the builtin exception a Python user would catch around the same call, so code
written for torchvision, timm or the standard library keeps working:

=============================  ==================================================================
``UsageError``                 ``ValueError``: a bad name, argument value or shape
``BadArgumentsError``          ``UsageError`` and ``TypeError``: keyword arguments a model does not
                               take, or of the wrong type (as Python raises for a function call)
``UnknownNameError``           ``UsageError`` and ``KeyError``: a name the registry does not have
``WeightsError``               ``ValueError``: weights that are corrupt, truncated or do not fit
``WeightsNotAvailableError``   ``FileNotFoundError`` (an ``OSError``, ``errno`` ENOENT): no weights
                               anywhere sslzoo looks, or a download that failed
=============================  ==================================================================
"""

from __future__ import annotations

import difflib
import errno
from typing import Iterable


class ZooError(Exception):
    """An error the user can act on. ``str(err)`` is a single line."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def __str__(self) -> str:
        # The builtins mixed in below format themselves otherwise: KeyError quotes its argument,
        # OSError prefixes "[Errno 2]" once errno is set.
        return self.args[0] if self.args else ""


class UsageError(ZooError, ValueError):
    """Bad names, arguments or shapes given by the caller."""

    exit_code = 2


class BadArgumentsError(UsageError, TypeError):
    """Keyword arguments an architecture does not take, or values of the wrong type: a ``TypeError``
    like any Python call with them, and a ``UsageError`` for the CLI."""


class UnknownNameError(UsageError, KeyError):
    """A model, architecture, method or layer name that does not exist."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = ""):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if not close:  # substring matches help with partial names such as "rotnet"
            close = [k for k in known if name.lower() in k.lower()][:3]
        suggestion = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = hint or f"known: {', '.join(known)}" if len(known) <= 12 else hint
        parts = [f"unknown {kind} {name!r}", suggestion, listing]
        super().__init__("; ".join(p for p in parts if p))


class WeightsError(ZooError, ValueError):
    """Weights that are missing, corrupt, truncated or do not fit the architecture."""


class WeightsNotAvailableError(ZooError, FileNotFoundError):
    """The registry entry has no published weights yet, or they could not be downloaded.

    A ``FileNotFoundError`` with ``errno`` ENOENT, so ``except FileNotFoundError`` (or ``OSError``)
    around loading catches it as it catches a missing file; ``filename`` is None, ``strerror`` the
    message."""

    def __init__(self, message: str):
        # OSError.__init__ given one argument leaves errno and strerror None; set them afterwards
        # (giving OSError two arguments would make it read the message as (errno, strerror) pairs).
        super().__init__(message)
        self.errno = errno.ENOENT
        self.strerror = self.args[0]
