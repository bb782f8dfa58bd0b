"""``ltemlive dashboard``: a web page of a running session, on FastAPI/Starlette served by uvicorn.

Routes (docs/dashboard.md has the protocol):

* ``GET /`` the page, ``GET /static/...`` its script and style sheet (shipped with the package: the page
  loads nothing from the internet);
* ``GET /api/state`` the run's state as JSON (:class:`~ltemlive.dashboard.gateway.Gateway`);
* ``GET /api/picture/{name}.png`` the latest rendering of a picture (404 before the first);
* ``WS /ws`` the state at once on connect - a page opened or reconnected mid-run shows the present without
  waiting for the next event - then every change, and a keep-alive when nothing changes;
* ``POST /api/command/{pause|resume|abort}`` forwarded to the controller, for the operator only:
  ``Authorization: Bearer TOKEN`` (401 without or with a wrong token, and nothing reaches the controller).

Everything else is read-only. The token never appears in a log line or in the page; uvicorn's access log,
which would print ``/?token=...`` URLs, is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from loguru import logger
from starlette.concurrency import run_in_threadpool

from ltemlive.dashboard.gateway import PICTURES, Gateway
from ltemlive.wire import security
from ltemlive.wire.security import Key, Keyring

__all__ = ["COMMANDS", "Access", "create_app", "run_dashboard"]

STATIC = Path(__file__).resolve().parent / "static"
#: the only controller commands the page may send
COMMANDS = ("pause", "resume", "abort")
KEEPALIVE_S = 5.0
TOKEN_ENV = "LTEMLIVE_DASHBOARD_TOKEN"

# Only this origin: no inline script, no foreign host, no framing. 'self' covers the page's own ws:// (CSP 3).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the address bar may briefly hold ?token=...
}


def _default_sender(endpoint: str):
    """send(action) -> (ok, message, status) through a fresh ControlClient: one per command, so no socket is
    shared between the threads the server runs commands on (ControlClient is not thread-safe)."""
    from ltemlive.controller.client import ControlClient

    def send(action: str) -> tuple[bool, str, dict]:
        with ControlClient(endpoint, timeout_s=3.0) as client:
            reply = client.command(action)
        return reply.ok, reply.message, dict(reply.status)

    return send


class Access:
    """Who a request is, in one of two modes.

    * **One operator token** (no keyring: a dashboard on loopback for the person at the console): whoever
      reaches the page reads; the token's holder may command.
    * **The keyring's logins** (``--keys``, docs/security.md): a person's key of role operator or monitor with
      a login token (``ltemlive keys login NAME``). Reading needs any login; commands need an operator's. A key
      revoked or a login replaced ends its access at the next request (the keyring is re-read on change).
    """

    def __init__(self, token: str | None = None, keyring: Keyring | None = None) -> None:
        if (token is None) == (keyring is None):
            raise ValueError("the dashboard needs either an operator token or a keyring of logins")
        if token is not None and not token:
            raise ValueError("the operator token must not be empty")
        self._token = None if token is None else token.encode()
        self.keyring = keyring

    @property
    def logins(self) -> bool:
        return self.keyring is not None

    def identify(self, token: str | None) -> Key | None:
        if not token:
            return None
        if self.keyring is not None:
            return self.keyring.check_login(token)
        assert self._token is not None
        return OPERATOR_TOKEN if secrets.compare_digest(token.encode(), self._token) else None

    def can_read(self, token: str | None) -> bool:
        """Anyone reads in token mode; with the keyring's logins, any valid login."""
        return self.keyring is None or self.identify(token) is not None


#: who holds the single operator token (token mode)
OPERATOR_TOKEN = Key("operator-token", "operator", b"")
LOGIN_COOKIE = "ltemlive_login"


def _bearer(request_headers) -> str | None:
    scheme, _, given = request_headers.get("authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def _who(key: Key) -> str:
    return "the operator token" if key is OPERATOR_TOKEN else f"{key.name} ({key.role})"


def create_app(gateway: Gateway, control_endpoint: str | None, token: str | None = None, *,
               keyring: Keyring | None = None, sender=None) -> FastAPI:
    """The dashboard's ASGI app. ``sender(action) -> (ok, message, status)`` defaults to a ControlClient on
    ``control_endpoint``; it may raise TimeoutError (the controller does not answer: 503)."""
    access = Access(token, keyring)
    if sender is None and control_endpoint:
        sender = _default_sender(control_endpoint)
    hub = _Hub(gateway)
    app = FastAPI(title="ltemlive dashboard", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=hub.lifespan)
    app.state.hub = hub
    app.state.access = access
    strangers = _Throttled()  # refusals of requests without a valid token: a flood of them must not flood the log

    def login_of(request: Request | WebSocket) -> str | None:
        return _bearer(request.headers) or request.cookies.get(LOGIN_COOKIE)

    def refused_read() -> JSONResponse:
        return JSONResponse({"ok": False, "message": "log in: this dashboard needs a login (ltemlive keys login)"},
                            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="ltemlive"'})

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.post("/api/login")
    async def login(request: Request) -> JSONResponse:
        """Who this token is; with the keyring's logins it also sets the cookie the page's reads carry
        (HttpOnly, SameSite=Strict; commands still need the Bearer header, so a cookie alone commands nothing)."""
        who = request.client.host if request.client else "?"
        given = _bearer(request.headers)
        key = access.identify(given)
        if key is None:
            strangers.warning("dashboard: login from {} refused: {}", who,
                              "no token" if not given else "unknown, wrong or revoked login")
            return JSONResponse({"ok": False, "message": "refused: unknown, wrong or revoked login"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="ltemlive"'})
        logger.info("dashboard: login {} from {}", _who(key), who)
        reply = JSONResponse({"ok": True, "name": key.name, "role": key.role, "logins": access.logins})
        if access.logins:
            assert given is not None
            reply.set_cookie(LOGIN_COOKIE, given, httponly=True, samesite="strict", path="/",
                             secure=request.url.scheme == "https")
        return reply

    @app.get("/api/whoami")
    async def whoami(request: Request) -> JSONResponse:
        """The page asks at start whether it must log in (``logins``) and who it is."""
        key = access.identify(login_of(request))
        return JSONResponse({"logins": access.logins, "name": key.name if key else None,
                             "role": key.role if key else None})

    @app.get("/api/state")
    async def state(request: Request) -> Response:
        if not access.can_read(login_of(request)):
            return refused_read()
        return Response(gateway.state()[1], media_type="application/json")

    @app.get("/api/picture/{name}.png")
    async def picture(name: str, request: Request) -> Response:
        if not access.can_read(login_of(request)):
            return refused_read()
        got = gateway.picture(name) if name in PICTURES else None
        if got is None:
            return JSONResponse({"detail": f"no {name} picture yet" if name in PICTURES else "no such picture"},
                                status_code=404)
        # The page asks for ?v=VERSION; the ETag lets a browser revalidate a plain URL cheaply.
        return Response(got.png, media_type="image/png",
                        headers={"ETag": f'"{got.version}"', "Cache-Control": "no-cache"})

    @app.post("/api/command/{action}")
    async def command(action: str, request: Request) -> JSONResponse:
        who = request.client.host if request.client else "?"
        if action not in COMMANDS:  # before the token: nothing else is a command here, for anyone
            return JSONResponse({"ok": False, "message": f"unknown command {action[:40]!r}; "
                                 f"the dashboard sends {', '.join(COMMANDS)}"}, status_code=404)
        given = _bearer(request.headers)  # never the cookie: a forged cross-site request carries that
        key = access.identify(given)
        if key is None:
            what = "login" if access.logins else "operator token"
            why = f"no {what}" if not given else f"wrong, unknown or revoked {what}"
            strangers.warning("dashboard: {} from {} refused: {}", action, who, why)
            return JSONResponse({"ok": False, "message": f"refused: {why}"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="ltemlive"'})
        if key.role != "operator":
            logger.warning("dashboard: {} by {} from {} refused: role {} is read only", action, _who(key), who,
                           key.role)
            return JSONResponse({"ok": False, "message": f"refused: {key.name} has role {key.role} (read only); "
                                 "commands need an operator's login"}, status_code=403)
        if sender is None:
            logger.warning("dashboard: {} from {} refused: no --control endpoint", action, who)
            return JSONResponse({"ok": False, "message": "read-only dashboard: started without --control"},
                                status_code=503)
        try:
            ok, message, status = await run_in_threadpool(sender, action)
        except TimeoutError as exc:  # ControllerUnreachable
            logger.warning("dashboard: {} from {}: controller does not answer: {}", action, who, exc)
            return JSONResponse({"ok": False, "message": f"the controller does not answer: {exc}"}, status_code=503)
        logger.info("dashboard: {} by {} from {} {}: {}", action, _who(key), who,
                    "accepted" if ok else "refused by the controller", message)
        return JSONResponse({"ok": ok, "message": message, "state": status.get("state")},
                            status_code=200 if ok else 409)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        token = login_of(websocket)
        if access.logins:
            await hub.serve(websocket, lambda: access.identify(token) is not None)
        else:
            await hub.serve(websocket)

    return app


class _Throttled:
    """Log at most ``burst`` lines per ``window_s``; the next line after a quiet spell says how many were left
    out (the count is the audit trail of a flood; each line of it would only fill the disk)."""

    def __init__(self, burst: int = 20, window_s: float = 10.0) -> None:
        self.burst, self.window_s = burst, window_s
        self._start, self._n, self._dropped = 0.0, 0, 0

    def warning(self, fmt: str, *args) -> None:
        now = time.monotonic()
        if now - self._start > self.window_s:
            if self._dropped:
                logger.warning("dashboard: {} more refusals of the kind above not logged in {:.0f} s", self._dropped,
                               self.window_s)
            self._start, self._n, self._dropped = now, 0, 0
        self._n += 1
        if self._n <= self.burst:
            logger.warning(fmt, *args)
        else:
            self._dropped += 1


class _Hub:
    """Hands the gateway's changes to the event loop and on to every websocket.

    The gateway calls :meth:`changed` from its threads; it schedules a wake-up on the loop (the only
    thread-safe way in). Each websocket then sends the *latest* state: a slow browser skips states rather
    than queueing them, so memory does not grow with slow clients.
    """

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self.clients = 0

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI):
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.gateway.add_listener(self.changed)
        try:
            yield
        finally:
            self.gateway.remove_listener(self.changed)

    def changed(self) -> None:  # a gateway thread
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:  # the loop
        if self._event is not None:
            self._event.set()
            self._event = asyncio.Event()  # the waiters hold the old one; the next change sets a new one

    async def serve(self, websocket: WebSocket, allowed=lambda: True) -> None:
        """Send the state, then every change; ``allowed()`` is asked before each send (a login revoked
        meanwhile closes the socket with 4401, which the page reads as "log in again")."""
        # A page of another site may not read the run through the visitor's browser: same origin only.
        origin = websocket.headers.get("origin")
        host = websocket.headers.get("host", "")
        if origin and origin.split("://", 1)[-1] != host:
            await websocket.close(code=1008)
            return
        if self._event is None:  # no lifespan ran (a bare ASGI server): start the hand-over on first use
            self.loop, self._event = asyncio.get_running_loop(), asyncio.Event()
            self.gateway.add_listener(self.changed)
        await websocket.accept()
        if not allowed():
            await websocket.close(code=4401, reason="log in")
            return
        self.clients += 1
        # Reading in the background notices a closed page at once (and ignores what a page sends).
        reader = asyncio.create_task(self._drain(websocket))
        try:
            sent = -1
            while not reader.done():
                waiter = self._event
                if not allowed():
                    await websocket.close(code=4401, reason="log in")
                    return
                seq, text = self.gateway.state()
                if seq != sent:
                    await websocket.send_text(f'{{"type":"state","seq":{seq},"state":{text}}}')
                    sent = seq
                    continue  # something may have changed while sending
                wait = asyncio.create_task(waiter.wait())
                done, _ = await asyncio.wait({wait, reader}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                wait.cancel()
                if not done:
                    await websocket.send_text(json.dumps({"type": "ping", "seq": sent, "t_epoch_s": time.time()}))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the page left while we were sending
        finally:
            reader.cancel()
            self.clients -= 1

    @staticmethod
    async def _drain(websocket: WebSocket) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                msg = await websocket.receive()
                if msg.get("type") == "websocket.disconnect":
                    return


# -- the command -------------------------------------------------------------------------------------------------

def _token(args) -> str:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(16)
    if not token.strip() or any(c.isspace() for c in token):
        raise ValueError("--token / $LTEMLIVE_DASHBOARD_TOKEN must be non-empty and contain no spaces")
    return token


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen before uvicorn starts, so that --port 0 has its number to print and a browser that
    connects at once waits in the backlog instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def run_dashboard(args, console) -> int:
    """Follow the publisher at args.address and serve the page until Ctrl-C (or SIGTERM)."""
    import uvicorn

    from ltemlive.publisher.subscriber import PublisherUnreachable
    from ltemlive.session.config import _endpoint

    for name, value in (("address", args.address), ("--control", args.control)):
        if value is not None:
            try:
                _endpoint(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    keyring = Keyring(args.keys) if getattr(args, "keys", None) is not None else None
    if keyring is not None:
        if args.token is not None:
            raise ValueError("--token is for a dashboard without --keys; with --keys each person logs in with "
                             "their own login (ltemlive keys login NAME)")
        if not any(keyring.has_login(k.name) for k in keyring.keys()):
            raise ValueError(f"--keys {args.keys}: no key there has a dashboard login yet; issue one with "
                             f"ltemlive keys --dir {args.keys} login NAME (a key of role operator or monitor)")
        token = None
    else:
        if not security.loopback_only(f"tcp://{args.host}:{args.port}"):
            raise ValueError(f"--host {args.host}: serving beyond loopback needs the keyring's logins (--keys DIR, "
                             "docs/security.md), or keep 127.0.0.1 and use an SSH tunnel (docs/dashboard.md)")
        token = _token(args)
    # The renderer thread draws with matplotlib (pure CPU, holding the GIL); the web server's I/O gives the
    # GIL up at every system call and must get it back quickly, or each request waits up to 5 ms per call.
    sys.setswitchinterval(0.0005)
    try:
        gateway = Gateway.connect(args.address, timeout_s=args.timeout, no_frame_s=args.no_frame_s,
                                  control=bool(args.control))
    except PublisherUnreachable:
        raise ValueError(f"nothing answers at {args.address} within {args.timeout:g} s: is the session running, and "
                         "is this its 'watch:' address?") from None
    sock = None
    # Command attempts are the operator's audit trail: show them (the CLI's own sink shows only warnings).
    audit = logger.add(sys.stderr, level="INFO", diagnose=False, format="{time:HH:mm:ss} {message}",
                       filter=lambda r: r["name"].startswith("ltemlive.dashboard") and r["level"].no < 30)
    try:
        sock = _listen(args.host, args.port)
        port = sock.getsockname()[1]
        gateway.start()
        app = create_app(gateway, args.control, token, keyring=keyring)
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                                ws_ping_interval=None, lifespan="on")
        server = uvicorn.Server(config)
        base = f"http://{_url_host(args.host)}:{port}/"
        console.print(f"dashboard of {args.address}" + ("" if args.control else " (read-only: no --control)"))
        if token is not None:
            # Like Jupyter: the address with the operator token; whoever opens it may pause and abort the run.
            console.print(f"open: {base}?token={token}", soft_wrap=True, highlight=False)
            console.print(f"read-only view: {base}   (Ctrl-C stops the dashboard, not the run)", highlight=False)
        else:
            console.print(f"open: {base}   and log in with your dashboard login (ltemlive keys login NAME); "
                          "operators may command, monitors read", soft_wrap=True, highlight=False)
        sys.stdout.flush()
        server.run(sockets=[sock])
    finally:
        logger.remove(audit)
        gateway.close()
        if sock is not None:
            sock.close()
    return 0
