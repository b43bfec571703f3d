"""Wire and storage formats, value kinds and key rules shared by every part of stepline.

This package imports nothing else of ours and does no I/O of its own (one exception: :func:`schemas.local.local_stack`
reads the record of a running ``stepline up``); every other package builds on it (``docs/DESIGN.md`` is the
contract these formats implement).
"""

from .errors import FencedError, LimitError, SchemaError, SettingsError, SteplineError
from .frame import (
    FRAME_FIELD,
    FRAME_VERSION,
    AnyEvent,
    BadEvent,
    ClientWarning,
    Config,
    DefineMetric,
    Finish,
    Frame,
    Log,
    LogBlock,
    Start,
    Summary,
    decode_event,
    decode_frame,
    encode_event,
    encode_frame_raw,
)
from .keys import RESERVED_KEYS, check_key, flatten, key_ident, section_of
from .limits import DEFAULT_LIMITS, Limits
from .media import Histogram, Html, Image, Table, blob_shas, collect_blobs, iter_media, line_series, plot
from .names import Names, partition_of
from .values import KINDS, MEDIA_KINDS, Media, capture, kind_of, packb, unpackb, values_equal

__all__ = [
    "DEFAULT_LIMITS",
    "FRAME_FIELD",
    "FRAME_VERSION",
    "KINDS",
    "MEDIA_KINDS",
    "RESERVED_KEYS",
    "AnyEvent",
    "BadEvent",
    "ClientWarning",
    "Config",
    "DefineMetric",
    "FencedError",
    "Finish",
    "Frame",
    "Histogram",
    "Html",
    "Image",
    "LimitError",
    "Limits",
    "Log",
    "LogBlock",
    "Media",
    "Names",
    "SchemaError",
    "SettingsError",
    "Start",
    "SteplineError",
    "Summary",
    "Table",
    "blob_shas",
    "capture",
    "check_key",
    "collect_blobs",
    "decode_event",
    "decode_frame",
    "encode_event",
    "encode_frame_raw",
    "flatten",
    "iter_media",
    "key_ident",
    "kind_of",
    "line_series",
    "packb",
    "partition_of",
    "plot",
    "section_of",
    "unpackb",
    "values_equal",
]
