"""An aiohttp-backed httpx transport for the router's async calls: half the CPU of httpx's own pool.

``Router(config, transport=aiohttp_transports(config))`` sends the async calls through aiohttp
(on httpx-aiohttp's connection pool) while bodies, timeouts and response parsing stay the router's.
Measured on the benchmark machine: 0.8 ms CPU per request against 1.6 ms for httpx's own pool
(aiohttp alone: 0.3 ms), then 0.05–0.09 ms less by sending each request itself (:class:`Transport`);
the gateway uses it (``experiments/results/bench_gateway.md``). aiohttp's failures are
raised as the httpx errors httpx's own pool raises for the same fault, so an attempt's outcome does
not depend on the transport. Sync calls cannot use these transports.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx

from ._backends import pool_limits, pool_verify
from ._config import Config
from ._optional import requires

with requires("gateway"):
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

__all__ = ["aiohttp_transports", "Transport"]


def _httpx_error(exc: BaseException) -> httpx.TransportError | None:
    """The httpx error for an aiohttp failure (also one httpx-aiohttp re-raised as an httpx error), or None."""
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if not isinstance(cause, aiohttp.ClientError):
        return None
    message = f"{type(cause).__name__}: {cause}"
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(cause, aiohttp.ClientPayloadError):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)  # a dropped connection, a malformed response


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientError, httpx.TransportError) as exc:
        mapped = _httpx_error(exc)
        if mapped is None:
            raise
        raise mapped from exc


class _Body(httpx.AsyncByteStream):
    """An aiohttp response's body as it arrives, its failures raised as httpx errors (one layer:
    httpx-aiohttp's own stream, wrapped to map its errors, cost a second generator per chunk)."""

    CHUNK = 64 * 1024

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._response.content.iter_chunked(self.CHUNK):
                yield chunk

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self._response.__aexit__(None, None, None)


class Transport(AiohttpTransport):
    """httpx-aiohttp's transport (its connection pool and TLS set-up), sending each request itself:
    a body already in memory goes as bytes (httpx-aiohttp streams it as an async iterable), headers
    as their raw pairs, and httpx's errors are raised (it leaves protocol errors as aiohttp's own
    and calls a dropped connection a connect timeout). No proxy: the router talks to each
    ``base_url`` directly."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        bounds = request.extensions.get("timeout", {})
        stream = request.stream
        data = b"".join(stream) if isinstance(stream, httpx.ByteStream) else stream
        with _as_httpx_errors():
            response = await self.client.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=data or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=bounds.get("connect"), sock_read=bounds.get("read"), connect=bounds.get("pool")
                ),
            )
        return httpx.Response(response.status, headers=response.raw_headers, stream=_Body(response), request=request)


def aiohttp_transports(config: Config) -> dict[str, httpx.AsyncBaseTransport]:
    """One :class:`Transport` per model of ``config``, its pool sized like the router's own."""
    return {name: Transport(verify=pool_verify(m), limits=pool_limits(m)) for name, m in config.models.items()}
