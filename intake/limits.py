"""The edge's limits per person and per client (the counters: :mod:`core.limits`).

**Per client** (``INTAKE_LIMIT_CLIENT_REQUESTS`` per window): the requests of one client address
to the registrant's routes that read or act on a registration (status, OTP, resends, photo,
test, wave), counted before the handler runs by :func:`per_client`, which those routes' handlers
are added with (no other request passes through it): one small upsert, on routes that query
PostgreSQL anyway. An answer of 5xx, returned or raised, is refunded; a 4xx counts. The address
is the connection's peer, or, when the peer is a trusted proxy (``INTAKE_LIMIT_TRUSTED_PROXIES``),
the last address of ``X-Forwarded-For`` that is not one (what the outermost trusted proxy saw);
it is counted under a keyed HMAC, never stored or labelled in clear.

**Per NIK** (``INTAKE_LIMIT_NIK_ATTEMPTS`` per window, registrations and resends together): the
registration route is the hot path, and most registrations never reach aiohttp (the express
path), so a registration costs no database round trip here. The persist worker counts the
registrations it stores, per batch (``workers/store.py``), and every edge reads the NIKs that
reached their limit every ``INTAKE_LIMIT_REFRESH_S`` (:class:`NikBlocks`); a registration of one
of those is answered ``429`` (:func:`intake.registering.envelope_for` raises :class:`Limited`).
While nothing is blocked (the usual case) the accept path does no more than look at an empty
dict; otherwise one HMAC of the NIK. A resend is counted in its own transaction
(``intake/contact_routes.py``), when it is granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from core import limits, metrics
from core.keys import Keyring
from core.settings import Settings
from intake.problems import problem

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

NIK_BLOCKS: web.AppKey[NikBlocks] = web.AppKey("nik_blocks")
CLIENT_LIMITER: web.AppKey[ClientLimiter] = web.AppKey("client_limiter")  # absent: the limit is off
TOO_MANY_TITLE = "Too many attempts; please wait before trying again"


class Limited(Exception):
    """A registration of a NIK that reached its limit: answer ``429`` with ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("limited")
        self.retry_after_s = retry_after_s


def too_many(limit: str, retry_after_s: int) -> web.Response:
    """The ``429`` problem of a limit (``nik`` or ``client``)."""
    return problem(
        429,
        "too-many-attempts",
        TOO_MANY_TITLE,
        headers={"Retry-After": str(retry_after_s)},
        limit=limit,
    )


def route_of(request: web.Request) -> str | None:
    """The template of the route ``request`` matched (a metric label), if any."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def client_address(
    peer: str | None,
    forwarded_for: list[str],
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> str:
    """The client's address: the peer, unless it is a trusted proxy; then, walking
    ``X-Forwarded-For`` (its fields in order) from the right, the first address that is not a
    trusted proxy (or the leftmost, if all are)."""
    address = peer or ""
    if not trusted or not _trusted(address, trusted):
        return address
    chain = [a.strip() for field in forwarded_for for a in field.split(",") if a.strip()]
    for candidate in reversed(chain):
        address = candidate
        if not _trusted(candidate, trusted):
            break
    return address


def _trusted(
    address: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


class ClientLimiter:
    """The per-client limit, shared by every edge through PostgreSQL."""

    def __init__(
        self, settings: Settings, keyring: Keyring, pool: Callable[[], asyncpg.Pool]
    ) -> None:
        self._key = keyring.nik_key
        self._window_s = settings.limit_client_window_s
        self._limit = settings.limit_client_requests
        self._trusted = settings.trusted_proxies()
        self._pool = pool

    def key(self, request: web.Request) -> bytes:
        """The keyed HMAC of the request's client address (domain-separated from NIKs,
        which are 16 digits)."""
        address = client_address(
            request.remote, request.headers.getall("X-Forwarded-For", []), self._trusted
        )
        return self._key.digest(b"client-address:" + address.encode())

    async def counted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count ``request`` against its client, then answer it with ``handler``; or ``429``
        when the client reached its limit. An answer of 5xx is refunded: a fault of ours, a
        ministry's or a gateway's, not the client's doing; a 4xx is the client's, raised
        (``web.HTTPException``, answered by ``errors_middleware``) or returned."""
        key = self.key(request)
        try:
            retry_after_s = await limits.hit(
                self._pool(), limits.CLIENT, key, self._window_s, self._limit
            )
        except _DB_ERRORS as exc:  # no database: the handler answers its 503 itself
            log.warning("client limit unavailable: %s", type(exc).__name__)
            return await handler(request)
        if retry_after_s is not None:
            metrics.LIMITED.labels(limits.CLIENT, str(route_of(request))).inc()
            return too_many(limits.CLIENT, retry_after_s)
        refund = True  # unless the handler's answer says otherwise: an unexpected error is a 500
        try:
            response = await handler(request)
            refund = response.status >= 500
            return response
        except web.HTTPException as exc:
            refund = exc.status >= 500
            raise
        finally:
            if refund:
                with contextlib.suppress(*_DB_ERRORS):
                    await limits.refund(self._pool(), limits.CLIENT, key)


def per_client(handler: Handler) -> Handler:
    """``handler``, its requests counted per client while the limit is on (the application's
    :data:`CLIENT_LIMITER`): the routes that read or act on one registration are added with
    it, so that no other request (a registration, a probe) passes through the limit at all.
    Innermost, as the handler itself: a ``429`` is counted and timed by the middlewares like
    any answer."""

    @functools.wraps(handler)
    async def counted(request: web.Request) -> web.StreamResponse:
        limiter = request.app.get(CLIENT_LIMITER)
        if limiter is None:
            return await handler(request)
        return await limiter.counted(request, handler)

    return counted


class NikBlocks:
    """The NIKs (keyed HMACs) that reached their limit, as last read from PostgreSQL: key →
    when their window ends (``time.time()``). Read every ``INTAKE_LIMIT_REFRESH_S``; about
    every ``PURGE_INTERVAL_S`` the same loop deletes the counters whose window ended."""

    PURGE_INTERVAL_S = 60.0

    def __init__(self, settings: Settings) -> None:
        self.blocked: dict[bytes, float] = {}
        self._limit = settings.limit_nik_attempts
        self._window_s = settings.limit_nik_window_s
        self._refresh_s = settings.limit_refresh_s
        self._windows = {
            kind: window_s
            for kind, window_s, on in (
                (limits.NIK, settings.limit_nik_window_s, settings.limit_nik_attempts > 0),
                (limits.CLIENT, settings.limit_client_window_s, settings.limit_client_requests > 0),
            )
            if on
        }

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """Read the NIKs over their limit once."""
        left = await limits.reached(pool, limits.NIK, self._limit, self._window_s)
        now = time.time()
        self.blocked = {key: now + left_s for key, left_s in left.items()}

    @contextlib.asynccontextmanager
    async def running(self, pool: asyncpg.Pool) -> AsyncIterator[None]:
        """Refresh (and purge) in the background while the edge runs (nothing when both limits
        are off)."""
        if not self._windows:
            yield
            return
        task = asyncio.create_task(self._loop(pool))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def purge(self, pool: asyncpg.Pool) -> None:
        """Delete the counters whose window ended (every edge does it now and then; the
        deletes are cheap, on the index of the windows' starts)."""
        for kind, window_s in self._windows.items():
            await limits.purge(pool, kind, window_s)

    async def _loop(self, pool: asyncpg.Pool) -> None:
        purged_at = time.monotonic()
        while True:
            try:
                if self._limit > 0:
                    await self.refresh(pool)
                if time.monotonic() - purged_at >= self.PURGE_INTERVAL_S:
                    purged_at = time.monotonic()
                    await self.purge(pool)
            except _DB_ERRORS as exc:
                metrics.LIMIT_REFRESH_FAILURES.inc()
                log.warning("limit refresh failed: %s", type(exc).__name__)
                now = time.time()  # keep what was read, but not past its windows
                self.blocked = {k: until for k, until in self.blocked.items() if until > now}
            await asyncio.sleep(self._refresh_s)

    def retry_after_s(self, keyring: Keyring, nik: str) -> int | None:
        """None if ``nik`` may register now, else the seconds until its window ends."""
        until = self.blocked.get(keyring.nik_hmac(nik))
        if until is None:
            return None
        left_s = until - time.time()
        return None if left_s <= 0 else limits.retry_after_s(left_s)
