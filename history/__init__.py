"""The read side of stepline: history as the query library sees it (``Api``, runs, sampled and full reads),
formatting for people and export. It reads the storage format of :mod:`schemas.store` and imports nothing of
``ingest`` or ``workers``; the CLI and the gateway both read through it.
"""

from .formatting import format_history, plain
from .query import Api, QueryError, RunNotFound, RunView

__all__ = ["Api", "QueryError", "RunNotFound", "RunView", "format_history", "plain"]
