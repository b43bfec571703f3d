"""Key rules: flattening, identity, panel sections and validation.

- Nested dicts are flattened with ``.``: ``{"a": {"b": 1}}`` logs the key ``a.b``. A flattened path *is* the same
  column as a literal dotted key (as in W&B's history), so the two spellings must not meet in one call:
  ``{"a.b": 1, "a": {"b": 2}}`` raises :class:`SchemaError` (``key_collision``) instead of silently keeping one.
- Keys are identified case-insensitively (:func:`key_ident`); the first spelling seen is kept for display.
- The panel section of a key is the text before its first ``/`` (``val/loss`` → ``val``); no ``/`` → ``""``.
- A key is valid Unicode text (no lone surrogates) without NUL characters: keys become column names and
  metadata text, and PostgreSQL text cannot hold NUL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import LimitError, SchemaError
from .limits import DEFAULT_LIMITS, Limits
from .values import text_ok

#: Columns the pipeline writes itself; a user may not log them.
RESERVED_KEYS = frozenset({"_step", "_timestamp", "_runtime"})


def key_ident(key: str) -> str:
    """The identity of a key: two keys with the same identity are one column."""
    return key.casefold()


def section_of(key: str) -> str:
    """The panel section of a key: the text before its first ``/``, or ``""``."""
    head, sep, _ = key.partition("/")
    return head if sep else ""


def check_key(key: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Validate one flattened key and return it."""
    if type(key) is not str:
        raise SchemaError(f"keys must be str, got {type(key).__name__}: {key!r:.80}", code="bad_key")
    if not key:
        raise SchemaError("keys must not be empty", code="bad_key", key=key)
    if len(key) > limits.max_key_length:
        raise LimitError(
            f"key {key[:60]!r}... is {len(key)} characters, the limit is {limits.max_key_length}",
            code="key_too_long",
            key=key[:60],
        )
    if key in RESERVED_KEYS:
        raise SchemaError(f"key {key!r} is reserved for the pipeline", code="reserved_key", key=key)
    if not key.isascii() and not text_ok(key):
        raise SchemaError(f"key {key!r:.80} is not valid Unicode text (a lone surrogate)", code="bad_key", key=key)
    if "\x00" in key:
        raise SchemaError(f"key {key!r:.80} contains a NUL character, which keys cannot hold", code="bad_key", key=key)
    return key


def flatten(data: Mapping[Any, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Flatten nested mappings with ``.`` and validate every key.

    Raises :class:`SchemaError` on a non-str key, an empty or reserved key, a key over the length limit, nesting
    deeper than the limit, or two spellings of one flattened key in the same call.
    """
    out: dict[str, Any] = {}
    _flatten_into(out, data, "", limits, 0)
    if len(out) > limits.max_elements:  # the decoder refuses a map this large
        raise LimitError(f"one call logs {len(out)} keys, the limit is {limits.max_elements}", code="too_many_keys")
    return out


def _flatten_into(out: dict[str, Any], data: Mapping[Any, Any], prefix: str, limits: Limits, depth: int) -> None:
    if depth > limits.max_depth:
        raise SchemaError(f"nesting deeper than {limits.max_depth} under {prefix!r:.80}", code="too_deep")
    for k, v in data.items():
        if type(k) is not str:
            raise SchemaError(f"keys must be str, got {type(k).__name__}: {k!r:.80}", code="bad_key")
        full = prefix + k
        if isinstance(v, Mapping):
            if not k:
                raise SchemaError(f"empty key under {prefix!r:.80}", code="bad_key")
            _flatten_into(out, v, full + ".", limits, depth + 1)
            continue
        check_key(full, limits)
        if full in out:
            raise SchemaError(
                f"key {full!r} is given twice in one call (a literal dotted key and a nested dict)",
                code="key_collision",
                key=full,
            )
        out[full] = v
