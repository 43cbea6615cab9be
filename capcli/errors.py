"""Error types and exit statuses shared by the library and the CLI."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    OK = 0  # every item captioned
    FATAL = 1  # no model, unwritable output, broken bundle
    USAGE = 2  # bad command line
    ITEMS_FAILED = 3  # finished, but some items produced error records
    INTERRUPTED = 130  # SIGINT; output ends on a whole line


class CapcliError(Exception):
    """Base class of every error capcli raises on purpose."""


class UsageError(CapcliError, ValueError):
    """A bad argument or option value (exit 2); the CLI shows it with the command's usage line."""


class FatalError(CapcliError):
    """Stops the whole run (exit 1): nothing sensible can be produced."""


class BundleError(FatalError):
    """A model bundle is missing, malformed or fails its checksums."""


class ItemError(CapcliError):
    """One input could not be captioned; becomes one error record.

    ``kind`` is a short machine-readable tag from the documented taxonomy
    (``not_found``, ``decode_error``, ``http_error``, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
