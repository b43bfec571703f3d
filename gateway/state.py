"""The gateway's state: one object under one typed ``web.AppKey`` (set in ``create_app``, filled in cleanup_ctx)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web

from .metrics import Metrics
from .settings import GatewaySettings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from history import Api
    from schemas.clients import AsyncRedis

    from .auth import KeyAuth
    from .backlog import Backlog


@dataclass
class GW:
    """Everything a handler needs. Resources are ``None`` until the app's cleanup_ctx has opened them."""

    KEY: ClassVar[web.AppKey[GW]]

    settings: GatewaySettings
    metrics: Metrics
    redis_client: AsyncRedis | None = None
    engine: Engine | None = None
    api_obj: Api | None = None
    auth_obj: KeyAuth | None = None
    backlog: Backlog | None = None
    #: ``(project, run, sha256)`` the blob route found referenced by the run (LRU; see :func:`.read.get_blob`).
    blob_grants: OrderedDict[tuple[str, str, str], None] = field(default_factory=OrderedDict)

    @property
    def redis(self) -> AsyncRedis:
        assert self.redis_client is not None, "the gateway is not started"
        return self.redis_client

    @property
    def api(self) -> Api:
        assert self.api_obj is not None, "the gateway is not started"
        return self.api_obj

    @property
    def auth(self) -> KeyAuth:
        assert self.auth_obj is not None, "the gateway is not started"
        return self.auth_obj


GW.KEY = web.AppKey("stepline_gateway", GW)
