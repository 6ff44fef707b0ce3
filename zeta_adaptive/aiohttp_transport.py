"""An aiohttp-backed httpx transport for the router's async calls: half the CPU of httpx's own pool.

``Router(config, transport=aiohttp_transports(config))`` sends the async calls through aiohttp
(httpx-aiohttp's transport) while bodies, timeouts and response parsing stay the router's. Measured
on the benchmark machine: 0.8 ms CPU per request against 1.6 ms for httpx's own pool (aiohttp alone:
0.3 ms); the gateway uses it (``experiments/results/bench_gateway.md``). aiohttp's failures are
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
    """A response body whose aiohttp failures surface as httpx errors."""

    def __init__(self, stream: httpx.AsyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        with _as_httpx_errors():
            await self._stream.aclose()


class Transport(AiohttpTransport):
    """httpx-aiohttp's transport, raising httpx's errors (it leaves protocol errors as aiohttp's
    own and calls a dropped connection a connect timeout)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _as_httpx_errors():
            response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Body(response.stream)
        return response


def aiohttp_transports(config: Config) -> dict[str, httpx.AsyncBaseTransport]:
    """One :class:`Transport` per model of ``config``, its pool sized like the router's own."""
    return {name: Transport(verify=pool_verify(m), limits=pool_limits(m)) for name, m in config.models.items()}
