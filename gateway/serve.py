"""Serving the gateway: :class:`GatewayRunner` (an ``AppRunner``) and :func:`run_app` (``web.run_app`` with it).

Guarantees:

- A request aiohttp refuses before any handler or middleware sees it — a request line or header over its 8190-byte
  limit, a malformed request line, method, header or transfer encoding — is answered with the JSON error every other
  refusal of the gateway has (``{"error": code, "message": ...}``, ``Content-Type: application/json``), with
  aiohttp's 4xx status, and the connection is closed. Codes: ``line_too_long`` and ``bad_http`` (400); an error
  aiohttp itself turns into a 500 or 504 outside the middleware is ``internal`` / ``timeout``. The message never
  echoes the request's bytes. Everything else (logging, closing, the refusal of a second reply after bytes went out)
  is aiohttp's own.
- Serve :func:`gateway.app.create_app` through :class:`GatewayRunner` (or :func:`run_app`) for this: aiohttp offers
  no public hook for these replies (aio-libs/aiohttp#3287), so the runner gives each connection a
  ``RequestHandler`` whose ``handle_error`` answers JSON. ``tests/gateway/test_protocol_errors.py`` holds it to
  that on the aiohttp version installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong


class _JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own refusals in the gateway's JSON shape."""

    __slots__ = ()  # the same layout as RequestHandler, so a connection's handler can take this class

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # aiohttp's logs the error, refuses (ConnectionError) when a reply has begun, and closes the connection.
        super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            code = "line_too_long"
            text = (f"the request line or a header is longer than {max(self.max_line_size, self.max_field_size)}"
                    " bytes: send long parameters in a shorter form")
        elif isinstance(exc, BadHttpMessage):
            code, text = "bad_http", f"malformed HTTP request ({type(exc).__name__})"
        elif status == 500:
            code, text = "internal", "unexpected error; see the gateway's log"
        elif status == 504:
            code, text = "timeout", "the request took too long"
        else:
            code, text = f"http_{status}", f"HTTP {status}"
        resp = web.Response(status=status, text=json.dumps({"error": code, "message": text}),
                            content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory) making :class:`_JsonErrorHandler` connections."""

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        # Same slots, no new state: only the class's handle_error differs.
        handler.__class__ = _JsonErrorHandler
        return handler


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer protocol-level refusals in JSON (see the module's guarantees)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # a subclass adding only __call__
        return server


def run_app(app: web.Application, *, host: str, port: int, shutdown_timeout: float,
            access_log: logging.Logger | None) -> None:
    """Serve ``app`` on ``host:port`` through :class:`GatewayRunner` until SIGINT or SIGTERM, then shut down
    gracefully (open requests get ``shutdown_timeout`` seconds), as ``web.run_app`` would."""

    async def serve() -> None:
        runner = GatewayRunner(app, handle_signals=True, shutdown_timeout=shutdown_timeout, access_log=access_log)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await asyncio.Event().wait()  # until a signal: the runner's handler raises GracefulExit
        finally:
            await runner.cleanup()

    # GracefulExit ends the loop; leaving the Runner cancels serve(), whose finally shuts the server down.
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt), asyncio.Runner() as runner:
        runner.run(serve())
