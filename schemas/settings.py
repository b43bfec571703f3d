"""The one settings pattern of stepline: frozen dataclasses filled from defaults, ``STEPLINE_*`` variables and
explicit overrides, in that order of precedence (lowest first).

Conventions every settings class follows (``ingest.settings``, ``workers.settings``, ``gateway.settings``):

- durations are seconds as ``float`` and their names end in ``_s``; sizes are bytes and end in ``_bytes``
  (flags and variables keep their documented units, e.g. ``--lease-ttl-ms``: the parser converts);
- each class lists its variables in one table of :class:`EnvVar`; only :func:`from_env` reads the environment,
  everything else receives the settings object;
- a malformed variable raises :class:`SettingsError` naming the variable; an empty one counts as unset;
- an override of ``None`` means "not given" (argparse leaves absent flags at ``None``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import SettingsError
from .limits import DEFAULT_LIMITS, Limits
from .names import DEFAULT_NAMESPACE, DEFAULT_PARTITIONS, DEFAULT_REDIS_URL, Names

T = TypeVar("T")

#: Where stepline data lives unless told otherwise (relative to the working directory).
DEFAULT_DATA_DIR = Path("stepline-data")


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One ``STEPLINE_*`` variable: the field it sets and how its text becomes the field's value."""

    name: str
    field: str
    parse: Callable[[str], Any] = str


@dataclass(frozen=True, slots=True)
class Deployment:
    """The fields every part of one deployment must agree on: where frames go, how keys are named, where data
    lives and the size limits. The client's, the workers' and the gateway's settings extend it."""

    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    partitions: int = DEFAULT_PARTITIONS
    data_dir: Path = DEFAULT_DATA_DIR
    limits: Limits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        if not isinstance(self.data_dir, Path):  # a str from a caller: accept it, keep the type honest
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        Names(self.namespace, self.partitions)  # raises ValueError on a bad namespace or partition count

    @property
    def names(self) -> Names:
        return Names(self.namespace, self.partitions)


@dataclass(frozen=True, slots=True)
class StoreDeployment(Deployment):
    """A deployment part that also reads or writes the metadata database (workers, the gateway)."""

    #: SQLAlchemy URL of the metadata store; ``None`` = the SQLite file ``<data_dir>/meta.sqlite``.
    db_url: str | None = None

    @property
    def metadata_url(self) -> str:
        return normalize_db_url(self.db_url or f"sqlite:///{self.data_dir / 'meta.sqlite'}")


#: The variables of :class:`Deployment`'s fields (and ``STEPLINE_DB_URL`` of :class:`StoreDeployment`).
DEPLOYMENT_ENV: tuple[EnvVar, ...] = (
    EnvVar("STEPLINE_REDIS_URL", "redis_url"),
    EnvVar("STEPLINE_NAMESPACE", "namespace"),
    EnvVar("STEPLINE_PARTITIONS", "partitions", int),
    EnvVar("STEPLINE_DATA_DIR", "data_dir", Path),
)
DB_ENV = EnvVar("STEPLINE_DB_URL", "db_url")


def normalize_db_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean PostgreSQL through psycopg 3 (the one driver we ship)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def flag(text: str) -> bool:
    """A boolean variable: ``1``, ``true`` or ``yes`` (any case) are true, anything else false."""
    return text.strip().lower() in ("1", "true", "yes")


def ms_to_s(text: str) -> float:
    """A variable given in milliseconds, for a field held in seconds."""
    return int(text) / 1000.0


def env_values(table: Sequence[EnvVar], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields set by the variables of ``table`` present (and non-empty) in ``environ`` (default
    ``os.environ``). Raises :class:`SettingsError` naming the first malformed variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in table:
        raw = env.get(var.name)
        if not raw:
            continue
        try:
            values[var.field] = var.parse(raw)
        except ValueError:
            raise SettingsError(f"{var.name} is malformed: {raw!r}") from None
    return values


def from_env(cls: Callable[..., T], table: Sequence[EnvVar], environ: Mapping[str, str] | None,
             overrides: Mapping[str, Any]) -> T:
    """``cls(**fields)`` from the variables of ``table`` and then ``overrides`` (``None`` values ignored).

    A value the class refuses (its ``__post_init__`` raises ``ValueError``) becomes a :class:`SettingsError`."""
    values = env_values(table, environ)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except SettingsError:
        raise
    except ValueError as e:
        raise SettingsError(str(e)) from None


def replace(obj: T, **changes: Any) -> T:
    """A copy of a settings object with ``changes`` applied (``None`` values are ignored)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]


def positive_int(text: str) -> int:
    """A command-line number that must be a whole number above zero (argparse names the flag on failure)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return v


def positive_float(text: str) -> float:
    """A command-line number of seconds (or similar) that must be finite and above zero."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above zero")
    return v


def non_negative_float(text: str) -> float:
    """A command-line number that may be zero but must be finite and not negative."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return positive_float(text)


def port(text: str) -> int:
    """A TCP port number (0 asks the system for a free one)."""
    if text.strip() == "0":
        return 0
    v = positive_int(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535, or 0 for any free port)")
    return v
