"""Helpers for the integration tests of the live service: configs, role processes, the run file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from ltemlive.controller.client import ControlClient
from ltemlive.session.config import RunConfig
from ltemlive.session.launch import Child

ROOT = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_dict(tmp_path: Path, **over: Any) -> dict:
    """config/default.yaml with the test's changes, writing into tmp_path."""
    base = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    base = merge(base, {"session": {"output_dir": str(tmp_path / "runs")}})
    return merge(base, over)


def small(tmp_path: Path, **over: Any) -> dict:
    """A fast session: 128^2 vortex, instant instrument, short reconstructions (accuracy not the point)."""
    fast = {
        "instrument": {
            "simulated": {"time_scale": 0.0, "simulation": {"shape": [128, 128], "specimen": "vortex_disc"}}
        },
        "plan": {"wait_for_feedback_s": 0, "exposure_s": 0.1, "dose_e_per_px": 20.0},
        "reconstruction": {"max_iter": 20},
        "controller": {"instrument_mode": "in_process", "peer_timeout_s": 2.0},
        "reconstructor": {"preview_interval_s": 0.5, "live": False},
    }
    return config_dict(tmp_path, **merge(fast, over))


def write_config(tmp_path: Path, data: dict, name: str = "session.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


class Session:
    """The roles as real processes (publisher, controller, reconstructor), started like `ltemlive run` does."""

    def __init__(self, data: dict, tmp_path: Path, *, reconstructor: bool = True, publisher: bool = True):
        self.cfg = RunConfig.model_validate(data)
        self.log_dir = tmp_path / "logs"
        self.children: dict[str, Child] = {}
        self.ready: dict[str, dict] = {}
        if publisher:
            self.start("publisher")
            got = self.ready["publisher"]
            self.cfg = self.cfg.with_endpoints(ingest=got["ingest"], updates=got["updates"], snapshot=got["snapshot"])
        else:
            self.cfg = self.cfg.with_endpoints(ingest="tcp://127.0.0.1:9")  # nobody: the sinks drop, never block
        self.start("controller")
        got = self.ready["controller"]
        self.cfg = self.cfg.with_endpoints(frames=got["frames"], control=got["control"])
        self.run_file = Path(got["run_file"])
        self.control = ControlClient(got["control"], timeout_s=10)
        if reconstructor:
            self.start("reconstructor")

    def start(self, role: str) -> Child:
        child = self.children[role] = Child(role, self.cfg, self.log_dir, log_level="INFO")
        self.ready[role] = child.wait_ready(120)
        return child

    def status(self) -> dict:
        return self.control.command("status").status

    def wait(self, predicate, timeout_s: float, what: str = "condition") -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ctl = self.children["controller"]
            if ctl.proc.poll() is not None:
                raise AssertionError(f"controller exited early while waiting for {what}")
            st = self.status()
            if predicate(st):
                return st
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last status {st}")

    def wait_controller_exit(self, timeout_s: float) -> int:
        code = self.children["controller"].wait(timeout_s)
        assert code is not None, f"controller still running after {timeout_s} s"
        return code

    def close(self) -> None:
        self.control.close()
        for role in ("controller", "reconstructor", "publisher"):
            child = self.children.pop(role, None)
            if child is not None:
                child.stop()


def rss_mb(pid: int) -> float:
    """A process's resident memory (MB), from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def read_run(path: Path) -> dict:
    """Everything the tests check, with h5py alone (as any user would read it)."""
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        fr = f["frames"]
        n = min(fr[k].shape[0] for k in fr)
        meta = [json.loads(fr["metadata_json"].asstr()[i]) for i in range(n)]
        out = {
            "n_frames": n,
            "series_index": fr["series_index"][:n],
            "index_in_series": fr["index_in_series"][:n],
            "planned": fr["defocus_planned_m"][:n],
            "commanded": fr["defocus_commanded_m"][:n],
            "readback": fr["defocus_readback_m"][:n],
            "t_written": fr["t_written_epoch_s"][:n],
            "t_end": fr["t_end_epoch_s"][:n],
            "true": np.array([m["truth"]["true_defocus_m"] if m.get("truth") else np.nan for m in meta]),
            "series_status": [s for s in f["series/status"].asstr()[:]],
            "recon_series": f["reconstructions/series_index"][:].tolist(),
            "provenance": [json.loads(t) for t in f["reconstructions/provenance_json"].asstr()[:]],
            "calibration_accepted": f["calibration/accepted"][:].tolist(),
            "calibration_scale": f["calibration/scale"][:].tolist(),
            "events": list(zip(f["events/kind"].asstr()[:], f["events/message"].asstr()[:], strict=True)),
        }
    return out
