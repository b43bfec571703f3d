"""The exception tree of stepline.

::

    SteplineError
     ├── SchemaError(ValueError)      malformed input: bad frame, bad value, bad key, over a size limit
     │    └── LimitError              a size limit (key length, value, event, frame) was exceeded
     ├── FencedError                  a commit was refused because the partition's epoch moved on
     └── SettingsError(ValueError)    a setting, flag or environment variable that cannot work

Every malformed input to the codecs in :mod:`schemas` raises :class:`SchemaError` (never another type),
so callers can dead-letter it with ``err.code`` as the reason.
"""

from __future__ import annotations


class SteplineError(Exception):
    """Root of every error stepline raises on purpose."""


class SchemaError(SteplineError, ValueError):
    """Input that does not follow the wire or storage format; ``code`` is a stable machine-readable reason."""

    code: str = "schema_error"

    def __init__(self, message: str, *, code: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.key = key


class LimitError(SchemaError):
    """A value, key, event or frame is larger than the configured limit."""

    code = "too_large"


class FencedError(SteplineError):
    """The partition was taken by another worker (its epoch moved on); this worker must drop it."""


class SettingsError(SteplineError, ValueError):
    """A setting, flag or ``init`` argument that cannot work (bad value, or a transport that does not exist)."""
