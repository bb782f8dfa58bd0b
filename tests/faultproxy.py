"""A small in-test TCP proxy that misbehaves on command: pass, blackhole, reset, delay, throttle.

    proxy = FaultProxy("127.0.0.1", target_port).start()    # clients connect to proxy.endpoint
    proxy.mode = "blackhole"                                 # connections stay open, nothing is forwarded
    proxy.reset()                                            # every connection is cut (RST); new ones pass
    proxy.delay_s = 0.05; proxy.rate_bytes_s = 20e6          # latency per chunk; a bandwidth limit

What a network does to a ZeroMQ link, without root or tc: the tests of issue 12's reliability table.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, host: str, target_port: int):
        self.target = (host, target_port)
        self.mode = "pass"  # "pass" | "blackhole"
        self.delay_s = 0.0
        self.rate_bytes_s = 0.0  # 0: unlimited
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept").start()
        return self

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                data = src.recv(_CHUNK)
                if not data:
                    break
                while self.mode == "blackhole" and not self._stop.is_set():
                    time.sleep(0.01)  # hold it: the peers see an open connection that carries nothing
                if self.delay_s:
                    time.sleep(self.delay_s)
                if self.rate_bytes_s:
                    time.sleep(len(data) / self.rate_bytes_s)
                dst.sendall(data)
                self.forwarded += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def reset(self) -> None:
        """Cut every open connection with a TCP RST (SO_LINGER 0); new connections pass."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.reset()
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
