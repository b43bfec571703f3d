"""Size limits shared by the SDK, the gateway and the workers.

The defaults are chosen so that one frame stays far below Redis's 512 MB bulk limit and one history row stays
cheap to hold in a worker's memory. Exceeding a limit is a :class:`~schemas.errors.LimitError` at the client
and a 413/422 at the gateway; the worker dead-letters an oversized event it receives anyway.

The decoder (:func:`schemas.values.unpackb`) enforces the byte and element limits on every string, bin, list and
map header before it allocates anything, and the nesting limit before it decodes a media payload; the frame
decoder then checks each value's nesting depth. ``log()`` refuses the same values up front.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Longest key, in characters, after flattening nested dicts.
MAX_KEY_LENGTH = 256
#: Largest encoded value (one list, array, table or media reference), in bytes.
MAX_VALUE_BYTES = 1 << 20
#: Largest encoded event (one log call, or one block of log calls), in bytes.
MAX_EVENT_BYTES = 4 << 20
#: Largest encoded frame (one stream entry), in bytes.
MAX_FRAME_BYTES = 8 << 20
#: Deepest nesting inside one logged value, and of nested dicts flattened into keys. In a value every list,
#: tuple, dict, numpy array and media reference is one level (``[[1.0]]`` is 2, an image 1, a table of scalars
#: 3), whether it reaches the decoder as msgpack containers or as ext types.
MAX_DEPTH = 32
#: Most items in one list or map of a decoded message (a log call's keys, a list value, a block's rows).
MAX_ELEMENTS = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits, as one value object so a deployment can override them in one place."""

    max_key_length: int = MAX_KEY_LENGTH
    max_value_bytes: int = MAX_VALUE_BYTES
    max_event_bytes: int = MAX_EVENT_BYTES
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_depth: int = MAX_DEPTH
    max_elements: int = MAX_ELEMENTS


DEFAULT_LIMITS = Limits()
