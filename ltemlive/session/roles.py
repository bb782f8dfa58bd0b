"""One process per role: ``python -m ltemlive.session.roles ROLE --config FILE`` (what ``ltemlive serve ROLE``
runs, and what ``ltemlive run`` starts for each role).

A role binds what it owns, prints one line ``READY {json}`` on stdout with the endpoints it bound (port * is
resolved) and serves until SIGINT/SIGTERM, then stops cleanly: the controller aborts the current series at the
next safe point, restores the defocus and closes its run file; the others just close. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from loguru import logger
from pydantic import ValidationError

from ltemlive.session.config import ROLES, ConfigError, RunConfig, check_everything, load_run_config
from ltemlive.session.optics import optics_of_config

__all__ = ["main", "serve_role"]

Ready = Callable[[dict[str, Any]], None]


def serve_controller(cfg: RunConfig, stop: threading.Event, on_ready: Ready, *, config_yaml: str = "") -> int:
    import zmq

    from drivers.factory import build
    from drivers.limits import SafetyLimits
    from ltemlive.controller.control import ControlServer
    from ltemlive.controller.controller import Controller
    from ltemlive.controller.feedback import DefocusFeedback
    from ltemlive.publisher.sink import EventSink

    ctx = zmq.Context()
    lock = threading.Lock()
    sink = EventSink(cfg.endpoints.ingest, source="controller", session=cfg.session.name, context=ctx)

    def emit(topic: str, payload: dict, arrays=()) -> None:
        with lock:  # one sink, two threads (acquisition, control): serialise
            sink.emit(topic, payload, arrays)

    optics = optics_of_config(cfg)
    microscope, camera = build(cfg.controller_instrument())
    limits = SafetyLimits.model_validate(cfg.instrument.get("limits") or {})
    controller = Controller(
        microscope,
        camera,
        cfg.plan,
        DefocusFeedback(cfg.feedback),
        session=cfg.session.name,
        output_dir=cfg.session.output_dir,
        optics=optics,
        frames_endpoint=cfg.bind_address("frames"),
        config_yaml=config_yaml or cfg.dump_yaml(),
        instrument_info={"backend": cfg.instrument.get("backend", "simulated"), "optics": optics.model_dump()},
        emit=emit,
        stream_kwargs={"cache_bytes": cfg.controller.cache_mb << 20, "peer_timeout_s": cfg.controller.peer_timeout_s},
        drain_timeout_s=cfg.controller.drain_timeout_s,
        max_defocus_step_m=limits.max_defocus_step_m,
        context=ctx,
    )
    control = ControlServer(controller, cfg.bind_address("control"), context=ctx).start()
    watcher = threading.Thread(target=lambda: (stop.wait(), controller.stop("stopped by signal")), daemon=True)
    watcher.start()
    try:
        on_ready({"frames": controller.stream.endpoint, "control": control.endpoint,
                  "run_file": str(controller.run_path), "run_id": controller.run_id})
        state = controller.run()
    finally:
        control.stop()
        sink.close()
        for part in (camera, microscope):
            try:
                part.close()
            except Exception:
                logger.exception("closing {}", part)
        from ltemlive.wire import security

        security.release(ctx)
        ctx.destroy(linger=0)
    return 0 if state.value == "done" and controller.outcome == "complete" else 1


def serve_reconstructor(cfg: RunConfig, stop: threading.Event, on_ready: Ready, **_: Any) -> int:
    from ltemlive.recon_service.service import ReconstructorService
    from ltemlive.session.config import reconstruction_config

    service = ReconstructorService(
        cfg.reconstructor,
        reconstruction_config(cfg),
        frames_endpoint=cfg.endpoints.frames,
        control_endpoint=cfg.endpoints.control,
        events_endpoint=cfg.endpoints.ingest,
        session=cfg.session.name,
    )
    on_ready({"worker": cfg.reconstructor.worker})
    service.run(stop)
    return 0


def serve_publisher(cfg: RunConfig, stop: threading.Event, on_ready: Ready, **_: Any) -> int:
    from ltemlive.publisher.publisher import serve

    serve(cfg.publisher_config(), stop, on_ready, handle_signals=False)
    return 0


def serve_instrument(cfg: RunConfig, stop: threading.Event, on_ready: Ready, **_: Any) -> int:
    from drivers.factory import build_backend
    from drivers.server import InstrumentServer

    server = InstrumentServer(lambda: build_backend(cfg.instrument), cfg.bind_address("instrument")).start()
    try:
        on_ready({"instrument": server.endpoint})
        stop.wait()
    finally:
        server.stop()
    return 0


SERVE = {
    "controller": serve_controller,
    "reconstructor": serve_reconstructor,
    "publisher": serve_publisher,
    "instrument": serve_instrument,
}


def serve_role(role: str, cfg: RunConfig, *, config_yaml: str = "") -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("{}: signal {} received, stopping", role, signum)
        stop.set()
        if role == "reconstructor":
            # A torch step cannot be interrupted, and nothing here needs saving: whatever had no result yet is
            # replayed by the acquisition side. Leave within the shutdown budget even mid-step.
            t = threading.Timer(0.5, lambda: (logger.info("reconstructor: leaving mid-step"), os._exit(0)))
            t.daemon = True
            t.start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def ready(endpoints: dict[str, Any]) -> None:
        # ltemlive run waits for this line; keep its format stable.
        endpoints = {**endpoints, "pid": os.getpid()}
        print("READY " + json.dumps({"role": role, **endpoints}), flush=True)
        logger.info("{} ready: {}", role, endpoints)

    if cfg.security.keys_dir is not None:
        from ltemlive.wire import security

        security.configure(cfg.security.keys_dir, cfg.key_name(role))
    return SERVE[role](cfg, stop, ready, config_yaml=config_yaml)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ltemlive serve",
        description="Run one role of a live session, for deployments across hosts (ltemlive run starts all four "
        "on one machine). The role binds what it owns, prints READY {json} with its endpoints, and serves until "
        "Ctrl-C / SIGTERM.",
        epilog="roles:\n"
        "  instrument     the instrument server (backend and limits from the instrument section)\n"
        "  controller     acquisition, run file, frame stream, control socket, defocus feedback\n"
        "  reconstructor  reconstructs each series from the frame stream (torch; CPU or GPU)\n"
        "  publisher      the update stream and snapshots for monitors\n\n"
        "example (config/split-*.yaml):\n"
        "  ltemlive serve controller --config config/split-microscope-pc.yaml\n"
        "  ltemlive serve reconstructor --config config/split-gpu-workstation.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("role", choices=ROLES, help="which role to run")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", help="session YAML (default: the built-in defaults)")
    src.add_argument("--config-json", help=argparse.SUPPRESS)  # what ltemlive run passes to its children
    p.add_argument("--worker", default=None,
                   help="reconstructor only: this worker's name (overrides reconstructor.worker), to run several "
                   "workers from one config, e.g. gpu-1 and gpu-2 on a two-GPU workstation")
    p.add_argument("--log-level", default="INFO")
    ns = p.parse_args(argv)
    logger.remove()
    # diagnose=False: a traceback in a log must not dump variable values (configs, buffers)
    log_format = "{time:HH:mm:ss.SSS} {level: <7} {message}"
    logger.add(sys.stderr, level=ns.log_level.upper(), format=log_format, diagnose=False)
    try:
        if ns.config_json:
            # "-": on stdin (ltemlive run's way: a command line is readable by every user of the machine)
            text = sys.stdin.readline() if ns.config_json == "-" else ns.config_json
            cfg = RunConfig.model_validate(json.loads(text))
            source = "config"
        else:
            cfg = load_run_config(ns.config)
            source = ns.config or "defaults"
        if ns.worker is not None:
            if ns.role != "reconstructor":
                raise ConfigError("--worker: only for the reconstructor role")
            recon = {**cfg.reconstructor.model_dump(), "worker": ns.worker}
            try:
                cfg = RunConfig.model_validate({**cfg.model_dump(mode="json"), "reconstructor": recon})
            except ValidationError:
                raise ConfigError(f"--worker: {ns.worker!r} is not a worker name (1-64 characters of A-Z a-z "
                                  "0-9 _ . : -)") from None
        check_everything(cfg, source, role=ns.role)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return serve_role(ns.role, cfg)
    except Exception as exc:
        logger.exception("{} failed", ns.role)
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
