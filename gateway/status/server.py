"""The HTTP side of the status listener, on aiohttp (the only module that imports it).

Routes (GET and HEAD only; any other method is 405, any other path 404; nothing here writes):
    /               the page (static/index.html), /static/app.js, /static/style.css: package data, no CDN
    /api/status     the snapshot as JSON (what `municipal-gateway watch` and the page's fallback poll read)
    /api/events     server-sent events: the snapshot every `refresh` seconds
    /metrics        Prometheus text format (metrics.py)
    /healthz        200 or 503 with a small JSON body (health.py); the one path without authentication,
                    so a watchdog or load balancer needs no password, and it says nothing but health

Live updates cannot pile up: one task makes each update once for every browser, and each browser has a
queue of one; an update that finds the last one still unsent replaces it (and is counted as dropped).
A browser that takes longer than WRITE_LIMIT to accept one update is let go. At most MAX_CLIENTS
follow the updates at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import importlib.resources
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.status import health, metrics
from gateway.status.snapshot import Snapshot, SnapshotSource

log = logging.getLogger(__name__)

SNAPSHOT_LIMIT = 5.0  # seconds a snapshot may take (the buffer's thread answers within it, or is stuck)
WRITE_LIMIT = 10.0  # seconds a browser may take to accept one live update
MAX_CLIENTS = 16
_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_HEADERS = {
    # Everything comes from here; no inline script, no framing, no sniffing, nothing cached, no referrer.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StatusServer:
    def __init__(self, host: str, port: int, source: SnapshotSource, refresh: float,
                 credentials: tuple[str, str] | None) -> None:
        self._host = host
        self._port = port
        self._source = source
        self._refresh = refresh
        self._credentials = None if credentials is None else tuple(part.encode() for part in credentials)
        self._files = {name: (importlib.resources.files(__package__).joinpath("static", name).read_bytes(), kind)
                       for name, kind in _STATIC.items()}
        self._updates = _Updates(self._encoded_snapshot, refresh)
        self._runner: web.AppRunner | None = None

    @property
    def listener_counters(self) -> dict[str, int]:
        return {"clients": len(self._updates.clients), "dropped": self._updates.dropped}

    async def start(self) -> None:
        """Bind and serve; raise OSError when the address cannot be bound."""
        app = web.Application(middlewares=[self._authenticate])
        app.on_response_prepare.append(_add_headers)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        # No access log: a page refreshing every 2 s would fill the journal. handle_signals: the gateway owns them.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def serve(self) -> None:
        """Make the live updates until cancelled (the HTTP server runs on its own)."""
        await self._updates.run()

    async def stop(self) -> None:
        self._updates.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- authentication ---------------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._credentials is not None and request.path != "/healthz" and not self._authorised(request):
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="municipal-gateway", charset="UTF-8"'})
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        assert self._credentials is not None
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        expected_user, expected_password = self._credentials
        # Both compared in full, in constant time, so the reply's timing says nothing of either.
        return hmac.compare_digest(user, expected_user) & hmac.compare_digest(password, expected_password)

    # -- routes -------------------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._files or name == "index.html":
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        body, kind = self._files[name]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _status(self, request: web.Request) -> web.Response:
        snapshot = await self._snapshot_or_503()
        return web.Response(body=_json(snapshot), content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        snapshot = await self._snapshot_or_503()
        text = metrics.render(snapshot, self.listener_counters)
        return web.Response(text=text, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            verdict = health.judge(await self._snapshot())
        except TimeoutError:
            verdict = health.judge(None, f"no snapshot within {SNAPSHOT_LIMIT:g} s (is the disk stuck?)")
        return web.json_response(verdict.as_json(), status=200 if verdict.healthy else 503)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._updates.clients) >= MAX_CLIENTS:
            raise web.HTTPServiceUnavailable(text=f"at most {MAX_CLIENTS} pages follow the live updates at once")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        client = self._updates.join()
        try:
            while (update := await client.next()) is not None:
                async with asyncio.timeout(WRITE_LIMIT):
                    await response.write(update)
        except (ConnectionError, TimeoutError):
            pass  # the browser went away, or stopped reading: let it go
        finally:
            self._updates.leave(client)
        return response

    # -- snapshots ----------------------------------------------------------------------------------------

    async def _snapshot(self) -> Snapshot:
        async with asyncio.timeout(SNAPSHOT_LIMIT):
            return await self._source.snapshot()

    async def _snapshot_or_503(self) -> Snapshot:
        try:
            return await self._snapshot()
        except TimeoutError:
            raise web.HTTPServiceUnavailable(text=f"no snapshot within {SNAPSHOT_LIMIT:g} s") from None

    async def _encoded_snapshot(self) -> bytes:
        return b"event: snapshot\ndata: " + _json(await self._snapshot()) + b"\n\n"


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_HEADERS)


def _json(snapshot: Snapshot) -> bytes:
    return json.dumps(snapshot.as_json(), separators=(",", ":")).encode()


class _Client:
    """One browser following the live updates: a queue of one update, the newest."""

    def __init__(self) -> None:
        self._waiting: bytes | None = None
        self._ready = asyncio.Event()
        self._closed = False

    def offer(self, update: bytes) -> bool:
        """Hand over `update`; False when it replaced one the browser had not taken yet."""
        replaced = self._waiting is not None
        self._waiting = update
        self._ready.set()
        return not replaced

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def next(self) -> bytes | None:
        """The next update, or None once closed."""
        await self._ready.wait()
        self._ready.clear()
        update, self._waiting = self._waiting, None
        return None if self._closed else update


class _Updates:
    """Makes one update every `refresh` seconds while any browser follows, and offers it to each."""

    def __init__(self, make: Callable[[], Awaitable[bytes]], refresh: float) -> None:
        self._make = make
        self._refresh = refresh
        self.clients: set[_Client] = set()
        self.dropped = 0
        self._latest: bytes | None = None
        self._followed = asyncio.Event()

    def join(self) -> _Client:
        client = _Client()
        if self._latest is not None:
            client.offer(self._latest)  # something to show at once; the next update follows on the beat
        self.clients.add(client)
        self._followed.set()
        return client

    def leave(self, client: _Client) -> None:
        self.clients.discard(client)
        if not self.clients:
            self._followed.clear()
            self._latest = None  # stale by the time someone comes back

    def close(self) -> None:
        for client in self.clients:
            client.close()

    async def run(self) -> None:
        while True:
            await self._followed.wait()
            with contextlib.suppress(TimeoutError):  # a slow snapshot: skip this beat (healthz reports it)
                self._latest = await self._make()
                for client in self.clients:
                    if not client.offer(self._latest):
                        self.dropped += 1
            await asyncio.sleep(self._refresh)  # the page's refresh beat
