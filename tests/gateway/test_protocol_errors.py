"""Requests aiohttp refuses before the gateway's handlers run get the gateway's JSON error, not aiohttp's text page
(issue 15, fuzz finding; ``gateway/serve.py``).

Before: ``GET /api/v1/projects/pa/runs/r0/sampled?key=xxx…`` with a 9,000-byte query got ``400`` ``text/plain``
"Bad Request" from aiohttp's parser, unlike every other refusal of the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway import GatewaySettings

pytestmark = pytest.mark.integration

HOST = b"Host: 127.0.0.1\r\n"
LONG_QUERY = b"GET /api/v1/projects/pa/runs/r0/sampled?key=" + b"x" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n"

#: (name, raw request, expected code): each refused by aiohttp's parser, none reaching a handler.
REFUSED = [
    ("long_request_line", LONG_QUERY, "line_too_long"),
    ("long_header", b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: " + b"y" * 9000 + b"\r\n\r\n", "line_too_long"),
    ("bad_request_line", b"NOT HTTP AT ALL\r\n\r\n", "bad_http"),
    ("bad_method", b"G\x01T /healthz HTTP/1.1\r\n" + HOST + b"\r\n", "bad_http"),
    ("bad_version", b"GET /healthz HTTP/9.9\r\n" + HOST + b"\r\n", "bad_http"),
    ("header_without_colon", b"GET /healthz HTTP/1.1\r\n" + HOST + b"no colon here\r\n\r\n", "bad_http"),
    ("nul_in_header", b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Bad: a\x00b\r\n\r\n", "bad_http"),
    ("bad_content_length", b"POST /api/v1/projects/pa/runs/r/frames HTTP/1.1\r\n" + HOST
     + b"Content-Length: abc\r\n\r\n", "bad_http"),
    ("chunked_and_length", b"POST /api/v1/projects/pa/runs/r/frames HTTP/1.1\r\n" + HOST
     + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "bad_http"),
    ("tls_hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, "bad_http"),
]


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; return the reply's status, headers (lower-case names) and body, read to the close (so a
    refusal that left the connection open would hang here, and fail at the deadline)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(data)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 30)  # the server closes after a refusal
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes, code: str, sent: bytes) -> None:
    assert status == 400, (status, body[:200])
    assert headers["content-type"].startswith("application/json"), headers
    err = json.loads(body)
    assert err["error"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert b"xxxxxxxx" not in body and b"yyyyyyyy" not in body  # the request's bytes are not echoed
    assert len(body) < 500, sent[:100]


@pytest.mark.parametrize(("name", "raw", "code"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_a_request_the_http_parser_refuses_gets_a_json_error(
        name: str, raw: bytes, code: str, gw_settings: GatewaySettings,
        make_client: Callable[..., Awaitable[Any]]) -> None:
    c = await make_client(gw_settings)
    status, headers, body = await exchange(c.server.port, raw)
    assert_json_error(status, headers, body, code, raw)
    # The gateway goes on serving (the refused connection was closed, not the server).
    r = await c.get("/healthz")
    assert r.status == 200 and (await r.json()) == {"ok": True}


async def test_refusals_by_the_gateway_itself_are_unchanged(gw_settings: GatewaySettings,
                                                            make_client: Callable[..., Awaitable[Any]]) -> None:
    """A query just under the parser's limit reaches the handlers: their own JSON refusals, on a kept-alive
    connection."""
    c = await make_client(gw_settings)
    r = await c.get("/api/v1/projects/pa/runs/r0/sampled", params={"key": "x" * 8000})
    assert r.status == 404 and r.content_type == "application/json"
    assert (await r.json())["error"] == "not_found"
    r = await c.get("/no/such/route")
    assert r.status == 404 and (await r.json())["error"] == "http_404"


def test_stepline_gateway_process_answers_json_and_stops_on_sigterm(
        gateway_proc: Callable[..., Any]) -> None:
    """The real ``python -m gateway`` (``gateway.serve.run_app``): the reproducer gets the JSON error, and SIGTERM
    still stops it cleanly (exit 0), as ``web.run_app`` did."""
    g = gateway_proc()
    status, headers, body = asyncio.run(exchange(g.port, LONG_QUERY))
    assert_json_error(status, headers, body, "line_too_long", LONG_QUERY)
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(30) == 0, g.log.read_text(errors="replace")
