"""The controller's control socket: a ROUTER (the controller binds) for reconstruction results and operator
commands, served by its own thread so that neither ever waits behind the acquisition.

RESULT -> :meth:`Controller.accept_result`, then ACK (also for a duplicate, flagged, so the sender stops
re-sending). COMMAND -> the controller's command methods, then REPLY with the run status. A malformed message
is counted and dropped; an unexpected error while handling one is logged and counted, and the loop goes on.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import zmq
from loguru import logger

from ltemlive import wire
from ltemlive.controller.controller import Controller
from ltemlive.wire import control as cm
from ltemlive.wire import security

#: with CURVE on: who may send what (docs/security.md). Anyone with a key may ask for the status.
RESULT_ROLES = ("reconstructor",)
COMMAND_ROLES = ("operator",)

__all__ = ["ControlServer"]

#: a result carries two float64 maps; 2 x 8192^2 x 8 bytes plus headers
MAX_CONTROL_BYTES = 1 << 30


class ControlServer:
    def __init__(self, controller: Controller, endpoint: str = "tcp://127.0.0.1:*", *, context: zmq.Context):
        self.controller = controller
        self._ctx = context
        self._sock = context.socket(zmq.ROUTER)
        wire.configure(self._sock, max_msg_bytes=MAX_CONTROL_BYTES, sndhwm=256)
        security.serve(self._sock)
        try:
            self._sock.bind(endpoint)
            security.check_refuses_strangers(self._sock)
        except (zmq.ZMQError, security.SecurityError):
            self._sock.close(linger=0)
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0

    def start(self) -> ControlServer:
        self._thread = threading.Thread(target=self._main, name="control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(100, zmq.POLLIN):
                    continue
                for _ in range(64):
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    try:
                        self._handle(frames)
                    except Exception:  # never let one message kill the loop
                        self.stats["errors"] += 1
                        logger.exception("control: error handling a message")
        finally:
            self._sock.close(linger=0)

    def _reply(self, identity: bytes, msg: wire.Envelope) -> None:
        msg = msg.model_copy(update={"seq": self._seq, "session": self.controller.session})
        self._seq += 1
        try:
            self._sock.send_multipart([identity, *cm.FROM_CONTROLLER.encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # gone or not reading: its problem, not ours
            self.stats["reply_dropped"] += 1
            logger.debug("control reply dropped: {}", exc)

    @staticmethod
    def _roles_for(msg: wire.Envelope) -> tuple[str, ...]:
        if isinstance(msg, cm.Result):
            return RESULT_ROLES
        if isinstance(msg, cm.Command) and msg.action == "status":
            return security.ROLES
        return COMMAND_ROLES

    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        try:
            msg, arrays = cm.TO_CONTROLLER.decode(frames[1:])
        except wire.WireError as exc:
            self.stats["malformed"] += 1
            if self.stats["malformed"] <= 10 or self.stats["malformed"] % 1000 == 0:
                logger.warning("control: malformed message dropped ({} so far): {}", self.stats["malformed"], exc)
            return
        if not security.allowed(frames[1], self._roles_for(msg)):
            self.stats["denied"] += 1
            who = security.sender_of(frames[1])
            what = msg.action if isinstance(msg, cm.Command) else "result"
            logger.warning("control: {} from key {} refused: its role may not", what,
                           f"{who.name} ({who.role})" if who else "unknown")
            if isinstance(msg, cm.Command):
                self._reply(identity, cm.Reply(id=msg.id, ok=False, message=f"refused: {what} needs an operator key"))
            return
        if isinstance(msg, cm.Command):
            who = security.sender_of(frames[1])
            logger.info("control: {} from {}", msg.action, f"key {who.name} ({who.role})" if who else "loopback")
        if isinstance(msg, cm.Result):
            self.stats["results"] += 1
            if msg.series is None:
                self.stats["malformed"] += 1
                return
            fresh = self.controller.accept_result(
                msg.series, msg.status, msg.reason, msg.parameters, msg.provenance, [a.copy() for a in arrays]
            )
            if not fresh:
                self.stats["duplicate_results"] += 1
            self._reply(identity, cm.Ack(series=msg.series, duplicate=not fresh))
            return
        if isinstance(msg, cm.Command):
            self.stats["commands"] += 1
            c = self.controller
            handlers = {
                "status": lambda: "ok",
                "pause": c.pause,
                "resume": c.resume,
                "abort": c.abort,
                "stop": c.stop,
                "freeze_feedback": lambda: c.freeze_feedback(True),
                "unfreeze_feedback": lambda: c.freeze_feedback(False),
                "reset_feedback": c.reset_feedback,
            }
            text = handlers[msg.action]()
            ok = not text.startswith("cannot")
            status = {**c.status(), "control": dict(self.stats)}
            self._reply(identity, cm.Reply(id=msg.id, ok=ok, message=text, status=wire.json_safe(status)))
