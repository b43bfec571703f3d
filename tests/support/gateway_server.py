"""The gateway as tests serve it in-process: aiohttp's ``TestServer`` through the gateway's own runner
(:class:`gateway.serve.GatewayRunner`), so a test sees the replies ``stepline gateway`` gives, protocol-level
refusals included."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from gateway.serve import GatewayRunner


class GatewayTestServer(TestServer):
    """``TestServer`` serving its app through :class:`GatewayRunner`."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GatewayRunner(self.app, **kwargs)
