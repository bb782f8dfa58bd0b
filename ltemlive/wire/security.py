"""CURVE keys, roles and the ZAP gate for every channel of the service (docs/security.md).

A **keyring** is a folder of ZeroMQ certificates (``zmq.auth`` format): ``NAME.key`` (public, with the key's
role in its metadata) and ``NAME.key_secret`` (secret, mode 0600, only on the host that is NAME). The public
certificates present in the folder are the allow-list; ``ltemlive keys revoke NAME`` moves a key to
``revoked/``, and from then on every new connection with it is refused (the folder is re-read when it changes).

Names the service uses: ``instrument`` (the instrument server), ``controller`` (acquisition: it drives the
instrument and serves the frame stream and the control socket), ``publisher``, one per reconstructor worker
(its worker name), and any number of people: role ``operator`` (commands) or ``monitor`` (read only).

A process calls :func:`configure` once (roles do it from the ``security`` section of the session config; CLI
tools from ``--keys``/``--key``); from then on :func:`serve` (before a bind) and :func:`connect` (before a
connect) make the sockets CURVE servers/clients, and the ZAP handler of the socket's context lets in only keys
of the keyring, on the ``ltemlive`` domain. Without :func:`configure` both are no-ops: plain loopback, as
before. Each message's sender is known from the ``User-Id`` the ZAP handler sets: :func:`sender_of` gives its
:class:`Key` (name and role), and each channel checks the role per message.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = [
    "DOMAIN",
    "PEOPLE",
    "ROLES",
    "Key",
    "Keyring",
    "SecurityError",
    "allowed",
    "check_refuses_strangers",
    "configure",
    "configured",
    "connect",
    "deconfigure",
    "loopback_only",
    "refused_count",
    "release",
    "sender_of",
    "serve",
]

DOMAIN = "ltemlive"
#: acquisition: the controller (drives the instrument); reconstructor: sends results and feedback; operator:
#: commands (pause, abort...); monitor: read only; server: a service that only serves (instrument, publisher)
ROLES = ("acquisition", "reconstructor", "operator", "monitor", "server")
#: roles of people: the only keys that may have a dashboard login (``NAME.login``)
PEOPLE = ("operator", "monitor")


class SecurityError(ValueError):
    """A key that is missing, malformed or of the wrong role; phrased for the user."""


@dataclass(frozen=True)
class Key:
    name: str
    role: str
    public: bytes  # z85 (40 bytes)


LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


def loopback_only(endpoint: str) -> bool:
    """ipc://, inproc:// or tcp:// on a loopback address: reachable from this host only."""
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host in LOOPBACK or host.startswith("127.")


def _check_name(name: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_.-" for c in name):
        raise SecurityError(f"key name {name!r}: 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


class Keyring:
    """The keys of one folder; re-read when the folder changes (a revocation takes effect at once)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._by_public: dict[bytes, Key] = {}
        self._by_name: dict[str, Key] = {}

    # -- making and revoking keys ---------------------------------------------------------------------------
    def create(self, name: str, role: str, *, overwrite: bool = False) -> Key:
        _check_name(name)
        if role not in ROLES:
            raise SecurityError(f"role {role!r}: one of {', '.join(ROLES)}")
        self.directory.mkdir(parents=True, exist_ok=True)
        public, secret = self.directory / f"{name}.key", self.directory / f"{name}.key_secret"
        if (public.exists() or secret.exists()) and not overwrite:
            raise SecurityError(f"{public}: a key named {name!r} exists (revoke it first, or overwrite)")
        zmq.auth.create_certificates(self.directory, name, metadata={"role": role})
        os.chmod(secret, 0o600)
        # pyzmq puts the metadata in the secret certificate only; the public one (the allow-list) needs the role
        pub, _ = zmq.auth.load_certificate(secret)
        public.write_text(
            "#   ZeroMQ CURVE public certificate of an ltemlive key (ltemlive keys create)\n"
            f'metadata\n    role = "{role}"\ncurve\n    public-key = "{pub.decode()}"\n',
            encoding="utf-8",
        )
        self._stamp = None
        return self.key(name)

    def revoke(self, name: str) -> Path:
        _check_name(name)
        public = self.directory / f"{name}.key"
        if not public.exists():
            raise SecurityError(f"{public}: no such key")
        revoked = self.directory / "revoked"
        revoked.mkdir(exist_ok=True)
        for path in (public, self.directory / f"{name}.key_secret", self.directory / f"{name}.login"):
            if path.exists():
                shutil.move(str(path), str(revoked / path.name))
        self._stamp = None
        return revoked / public.name

    def issue_login(self, name: str) -> str:
        """A new dashboard login for a person's key (operator or monitor), replacing any earlier one.

        The token is ``NAME.RANDOM`` (256 bits); only its SHA-256 is kept, in ``NAME.login`` (mode 0600), so the
        keyring folder holds nothing a thief could log in with. A fast hash is enough for a random token (it
        is not a password someone chose). Shown once: a lost token is replaced, not recovered."""
        key = self.key(name)
        if key.role not in PEOPLE:
            raise SecurityError(f"{name!r} has role {key.role}: a dashboard login is for a person's key "
                                f"({' or '.join(PEOPLE)})")
        token = f"{name}.{secrets.token_urlsafe(32)}"
        path = self.directory / f"{name}.login"
        tmp = path.with_suffix(".login.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"sha256 {hashlib.sha256(token.encode()).hexdigest()}\n")
        os.replace(tmp, path)
        return token

    def has_login(self, name: str) -> bool:
        return (self.directory / f"{_check_name(name)}.login").exists()

    def check_login(self, token: str) -> Key | None:
        """The key a dashboard login token belongs to, or None (unknown, wrong, revoked, not a person's)."""
        name, dot, _ = token.partition(".")
        try:
            _check_name(name)
        except SecurityError:
            return None
        if not dot:
            return None
        with self._lock:
            self._refresh()
            key = self._by_name.get(name)
        if key is None or key.role not in PEOPLE:
            return None
        try:
            stored = (self.directory / f"{name}.login").read_text(encoding="utf-8").split()
        except OSError:
            return None
        given = hashlib.sha256(token.encode()).hexdigest()
        if len(stored) != 2 or stored[0] != "sha256" or not secrets.compare_digest(stored[1], given):
            return None
        return key

    # -- reading ----------------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        try:
            st = self.directory.stat()
            stamp = (st.st_mtime, len(list(self.directory.glob("*.key"))))
        except OSError:
            stamp = (0.0, 0)
        if stamp == self._stamp:
            return
        by_public: dict[bytes, Key] = {}
        by_name: dict[str, Key] = {}
        for path in sorted(self.directory.glob("*.key")):
            key = _read_public(path)
            if key is not None:
                by_public[key.public] = key
                by_name[key.name] = key
        self._by_public, self._by_name, self._stamp = by_public, by_name, stamp

    def keys(self) -> list[Key]:
        with self._lock:
            self._refresh()
            return sorted(self._by_name.values(), key=lambda k: k.name)

    def key(self, name: str) -> Key:
        with self._lock:
            self._refresh()
            key = self._by_name.get(name)
        if key is None:
            raise SecurityError(f"{self.directory}: no key named {name!r} (ltemlive keys create {name} --role ...)")
        return key

    def lookup(self, public_z85: bytes) -> Key | None:
        with self._lock:
            self._refresh()
            return self._by_public.get(bytes(public_z85))

    def secret(self, name: str) -> tuple[bytes, bytes]:
        """This host's own (public, secret) pair, z85."""
        path = self.directory / f"{name}.key_secret"
        if not path.exists():
            raise SecurityError(f"{path}: no secret key for {name!r} on this host")
        if os.name != "nt" and path.stat().st_mode & 0o077:
            raise SecurityError(f"{path}: readable by others (chmod 600 it)")
        public, secret = zmq.auth.load_certificate(path)
        if secret is None:
            raise SecurityError(f"{path}: not a secret certificate")
        return public, secret


def _read_public(path: Path) -> Key | None:
    try:
        public, _ = zmq.auth.load_certificate(path)
        role = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("role"):
                role = line.split("=", 1)[1].strip().strip('"')
    except (OSError, ValueError):
        return None
    if role not in ROLES:
        return None
    return Key(path.stem, role, bytes(public))


# -- the process's configuration ---------------------------------------------------------------------------
@dataclass
class _Config:
    keyring: Keyring
    name: str
    public: bytes
    secret: bytes


_config: _Config | None = None
_gates: dict[int, _Gate] = {}
_gates_lock = threading.Lock()


def configure(keyring: Keyring | str | os.PathLike[str], name: str) -> Key:
    """Secure this process's sockets with the key ``name`` of ``keyring``; returns it (its role)."""
    global _config
    ring = keyring if isinstance(keyring, Keyring) else Keyring(keyring)
    key = ring.key(name)
    public, secret = ring.secret(name)
    _config = _Config(ring, name, public, secret)
    return key


def deconfigure() -> None:
    """Back to plain sockets (tests); stops the ZAP handlers."""
    global _config
    _config = None
    with _gates_lock:
        for gate in _gates.values():
            gate.stop()
        _gates.clear()


def configured() -> Key | None:
    return None if _config is None else _config.keyring.key(_config.name)


class _Gate:
    """The ZAP handler of one context: lets in keys of the keyring on DOMAIN, names them by key name."""

    def __init__(self, context: zmq.Context, keyring: Keyring):
        from zmq.auth.thread import ThreadAuthenticator

        self.keyring = keyring
        self.stats: Counter[str] = Counter()
        gate = self

        class _Auth(ThreadAuthenticator):
            def curve_user_id(self, client_public_key: bytes) -> str:
                key = keyring.lookup(z85.encode(client_public_key))
                return key.name if key is not None else ""

        class _Provider:
            def callback(self, domain: str, key: bytes) -> bool:
                ok = keyring.lookup(key) is not None
                gate.stats["allowed" if ok else "refused"] += 1
                return ok

        self.auth = _Auth(context)
        self.auth.start()
        self.auth.configure_curve_callback(DOMAIN, credentials_provider=_Provider())

    def stop(self) -> None:
        try:
            self.auth.stop()
        except Exception:
            pass


def _gate(context: zmq.Context) -> _Gate:
    assert _config is not None
    with _gates_lock:
        gate = _gates.get(id(context))
        if gate is None:
            gate = _gates[id(context)] = _Gate(context, _config.keyring)
        return gate


def release(context: zmq.Context) -> None:
    """Stop the ZAP handler of ``context`` (call before terminating the context: a handler left running
    would fail on the terminated context)."""
    with _gates_lock:
        gate = _gates.pop(id(context), None)
    if gate is not None:
        gate.stop()


def refused_count(context: zmq.Context) -> int:
    gate = _gates.get(id(context))
    return 0 if gate is None else gate.stats["refused"]


def serve(sock: zmq.Socket) -> None:
    """Before ``bind``: a CURVE server admitting the keyring's keys (no-op unless configured)."""
    if _config is None:
        return
    _gate(sock.context)
    sock.curve_secretkey = _config.secret
    sock.curve_publickey = _config.public
    sock.zap_domain = DOMAIN.encode()
    sock.curve_server = True


_PEER_OF = {zmq.ROUTER: zmq.DEALER, zmq.PULL: zmq.PUSH, zmq.PUB: zmq.SUB, zmq.REP: zmq.REQ}


def check_refuses_strangers(sock: zmq.Socket, timeout_s: float = 3.0) -> None:
    """Start-up self-test, after ``bind``: a throwaway key must be refused by this socket's ZAP handler.
    Raises SecurityError if it is not (no-op unless configured)."""
    if _config is None:
        return
    gate = _gate(sock.context)
    before = gate.stats["refused"]
    probe = sock.context.socket(_PEER_OF.get(sock.type, zmq.DEALER))
    try:
        public, secret = zmq.curve_keypair()
        probe.linger = 0
        probe.curve_secretkey, probe.curve_publickey = secret, public
        probe.curve_serverkey = _config.public
        probe.connect(sock.getsockopt_string(zmq.LAST_ENDPOINT).replace("0.0.0.0", "127.0.0.1"))
        deadline = threading.Event()
        for _ in range(int(timeout_s / 0.01)):
            if gate.stats["refused"] > before:
                return
            deadline.wait(0.01)
        raise SecurityError(f"self-test: {sock.getsockopt_string(zmq.LAST_ENDPOINT)} did not refuse an unknown key")
    finally:
        probe.close(linger=0)


def connect(sock: zmq.Socket, server: str) -> None:
    """Before ``connect``: a CURVE client of the server whose key is named ``server`` (no-op unless
    configured)."""
    if _config is None:
        return
    sock.curve_secretkey = _config.secret
    sock.curve_publickey = _config.public
    sock.curve_serverkey = _config.keyring.key(server).public


def sender_of(frame: Any) -> Key | None:
    """The key a received frame came with (None: not secured, or a key no longer in the keyring)."""
    if _config is None:
        return None
    try:
        name = frame.get("User-Id")
    except (AttributeError, zmq.ZMQError):
        return None
    if not name:
        return None
    try:
        return _config.keyring.key(name)
    except SecurityError:
        return None


def allowed(frame: Any, roles: tuple[str, ...]) -> bool:
    """True when the service is not secured, or the frame's sender has one of ``roles``."""
    if _config is None:
        return True
    key = sender_of(frame)
    return key is not None and key.role in roles
