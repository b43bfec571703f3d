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
from .objects import StorageTarget, parse_storage_url

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
    #: Where segments and media blobs live (:mod:`schemas.objects`): ``None`` = the data directory, else
    #: ``s3://bucket/prefix`` or ``file:///path``. The S3 endpoint and region default to the AWS variables.
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def __post_init__(self) -> None:
        Deployment.__post_init__(self)  # (a slots dataclass has no zero-argument super())
        self.storage  # noqa: B018 - raises ValueError (a SettingsError from from_env) for a bad URL

    @property
    def metadata_url(self) -> str:
        return normalize_db_url(self.db_url or f"sqlite:///{self.data_dir / 'meta.sqlite'}")

    @property
    def storage(self) -> StorageTarget:
        """The parsed storage location (no connection made); :func:`schemas.objects.open_store` connects."""
        return parse_storage_url(self.storage_url, self.data_dir, endpoint=self.s3_endpoint_url,
                                 region=self.s3_region)


#: The variables of :class:`Deployment`'s fields (and ``STEPLINE_DB_URL`` of :class:`StoreDeployment`).
DEPLOYMENT_ENV: tuple[EnvVar, ...] = (
    EnvVar("STEPLINE_REDIS_URL", "redis_url"),
    EnvVar("STEPLINE_NAMESPACE", "namespace"),
    EnvVar("STEPLINE_PARTITIONS", "partitions", int),
    EnvVar("STEPLINE_DATA_DIR", "data_dir", Path),
)
DB_ENV = EnvVar("STEPLINE_DB_URL", "db_url")
#: The storage location's variable (workers, the gateway); the S3 endpoint, region and credentials come from the
#: usual AWS variables (:mod:`schemas.objects`), the endpoint and region also from flags.
STORAGE_ENV = EnvVar("STEPLINE_STORAGE_URL", "storage_url")


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


def add_storage_arguments(ap: argparse.ArgumentParser) -> None:
    """The storage location's flags (:class:`StoreDeployment`'s ``storage_url``, ``s3_endpoint_url``,
    ``s3_region``), the same for every command that reads or writes history."""
    ap.add_argument("--storage-url", help="where segments and media live: s3://bucket/prefix or file:///path "
                    "(STEPLINE_STORAGE_URL; default the data directory)")
    ap.add_argument("--s3-endpoint-url", help="S3 endpoint, e.g. http://minio:9000 (default AWS_ENDPOINT_URL)")
    ap.add_argument("--s3-region", help="S3 region (default AWS_REGION, else us-east-1)")


def storage_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The storage flags' values, for ``from_env(**overrides)`` (absent flags are None: not given)."""
    return {k: getattr(args, k, None) for k in ("storage_url", "s3_endpoint_url", "s3_region")}
