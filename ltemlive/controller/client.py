"""A small client of the controller's control socket, for operators' tools and tests:
``ControlClient(endpoint).command("pause")`` returns the controller's REPLY (ok, message, run status)."""

from __future__ import annotations

import uuid

import zmq

from ltemlive import wire
from ltemlive.wire import control as cm
from ltemlive.wire import security

__all__ = ["ControlClient", "ControllerUnreachable"]


class ControllerUnreachable(TimeoutError):
    pass


class ControlClient:
    def __init__(self, endpoint: str, *, context: zmq.Context | None = None, timeout_s: float = 5.0):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._own = context is None
        self._ctx = context or zmq.Context()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            wire.configure(s, max_msg_bytes=1 << 20)
            security.connect(s, "controller")
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def command(self, action: str, timeout_s: float | None = None) -> cm.Reply:
        """Send one command and wait for its reply. After a timeout the socket is discarded, so a late reply
        can never be taken for the answer to a later command."""
        rid = uuid.uuid4().hex[:16]
        sock = self._socket()
        sock.send_multipart(cm.TO_CONTROLLER.encode(cm.Command(id=rid, action=action)))
        wait_ms = int(1000 * (self.timeout_s if timeout_s is None else timeout_s))
        while sock.poll(wait_ms, zmq.POLLIN):
            try:
                msg, _ = cm.FROM_CONTROLLER.decode(sock.recv_multipart())
            except wire.WireError:
                continue
            if isinstance(msg, cm.Reply) and msg.id == rid:
                return msg
        self._sock.close(linger=0)
        self._sock = None
        raise ControllerUnreachable(f"no reply from the controller at {self.endpoint} within {wait_ms / 1000:g} s")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._own:
            self._ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
