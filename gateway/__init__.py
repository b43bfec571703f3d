"""The HTTP gateway: authenticated ingest and read API over aiohttp (``stepline gateway``, ``stepline keys``).

Clients that cannot reach Redis post the SDK's frames here; the gateway validates them whole with
:mod:`schemas`, appends them to the run's partition stream in one transaction, and serves history through
:class:`history.query.Api`. Guarantees (details in each module):

- A request is accepted whole or refused whole (:mod:`.write`); a refusal is a JSON error naming the problem.
- Keys are per project with scopes ``write``/``read``/``admin``, stored hashed, compared in constant time
  (:mod:`.keys`, :mod:`.auth`); without any key the gateway serves loopback only.
- Backpressure: per-key rate limits and a per-partition backlog high-water mark answer 429 with ``Retry-After``
  (:mod:`.backlog`), so Redis memory stays bounded; Redis down → 503 with ``Retry-After``.
- ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text, :mod:`.metrics`).

Entry points: :func:`create_app`, :func:`main` (``stepline gateway``), :func:`keys_main` (``stepline keys``).
"""

from .app import create_app
from .cli import main
from .keys import keys_main
from .settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app", "keys_main", "main"]
