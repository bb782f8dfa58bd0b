"""The session config: every shipped file loads; a mistake names the file, the field and what is allowed; the
commands refuse bad input with one line and exit 2, before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltemlive.session.config import ConfigError, check_everything, load_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_is_valid_and_miscalibrated_on_purpose():
    cfg = load_run_config(ROOT / "config/default.yaml")
    check_everything(cfg, "config/default.yaml")
    sim = cfg.instrument["simulated"]["simulation"]
    assert abs(sim["defocus_scale_error"]) >= 0.05  # the demo shows the feedback working
    for name in ("frames", "control", "ingest", "updates", "snapshot", "instrument"):
        assert getattr(cfg.endpoints, name).startswith("tcp://127.0.0.1:")  # loopback unless configured


def test_split_deployment_examples_are_valid(tmp_path):
    from ltemlive.wire.security import Keyring

    ring = Keyring(tmp_path / "keys")  # the examples bind beyond loopback: they name a keyring
    for name, role in (("controller", "acquisition"), ("publisher", "server"), ("gpu-1", "reconstructor")):
        ring.create(name, role)
    keys = {"security": {"keys_dir": str(ring.directory)}}
    pc = load_run_config(ROOT / "config/split-microscope-pc.yaml", keys)
    assert pc.security.keys_dir is not None
    check_everything(pc, "split-microscope-pc.yaml", role="controller")
    ws = load_run_config(ROOT / "config/split-gpu-workstation.yaml", keys)
    check_everything(ws.model_copy(update={"reconstruction": {}}), "split-gpu-workstation.yaml", role="reconstructor")
    assert ws.endpoints.frames == pc.endpoints.frames and ws.endpoints.control == pc.endpoints.control
    assert load_run_config(ROOT / "config/split-gpu-workstation.yaml").reconstruction["device"] == "cuda"


def test_binding_beyond_loopback_without_keys_is_refused():
    cfg = load_run_config(ROOT / "config/split-microscope-pc.yaml", {"security": {}})
    with pytest.raises(ConfigError, match=r"endpoints.frames: binding tcp://10.0.0.10:7101 beyond loopback needs "
                                          r"CURVE keys"):
        check_everything(cfg, "x.yaml", role="controller")
    local = load_run_config(None, {"bind": {"updates": "tcp://0.0.0.0:7202"}})
    with pytest.raises(ConfigError, match=r"endpoints\.updates"):
        check_everything(local, "x.yaml", role="publisher")


def write(tmp_path, data) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"plan": {"repeat": 3}}, ["plan.repeat", "unknown field", "repeats"]),
        ({"plan": {"defocus_m": [-1.6, 1.6]}}, ["plan.defocus_m", "metres"]),
        ({"plan": {"exposure_s": -1}}, ["plan.exposure_s", "greater than 0"]),
        ({"feedback": {"fit_offset": "sometimes"}}, ["feedback.fit_offset", "'auto'", "'never'", "'always'"]),
        ({"endpoints": {"frames": "http://x"}}, ["endpoints.frames", "tcp://HOST:PORT"]),
        ({"sesion": {}}, ["sesion", "unknown field", "session"]),
        ({"controller": {"instrument_mode": "local"}}, ["controller.instrument_mode", "'remote'", "'in_process'"]),
    ],
)
def test_mistakes_name_the_file_field_and_allowed_values(tmp_path, data, expected):
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_run_config(p)
    text = str(exc.value)
    assert text.startswith(str(p))
    for e in expected:
        assert e in text, text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"reconstruction": {"max_iters": 5}}, ["reconstruction.max_iters", "unknown field", "max_iter"]),
        ({"reconstruction": {"device": "gpu"}}, ["reconstruction.device", "cpu"]),
        ({"instrument": {"backend": "hitachi"}}, ["instrument.backend", "simulated", "thermo", "jeol"]),
        ({"instrument": {"simulated": {"time_scale": -1}}}, ["instrument.simulated.time_scale"]),
        ({"plan": {"defocus_m": [-6e-3, 6e-3]}}, ["plan.defocus_m", "limits"]),
    ],
)
def test_sections_checked_by_other_modules(tmp_path, data, expected):
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        check_everything(load_run_config(p), str(p))
    for e in expected:
        assert e in str(exc.value), str(exc.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(write(tmp_path, "plan: [unclosed"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(write(tmp_path, "- 1\n- 2\n"))


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ltemlive.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("command", [["run"], ["replay", "x.h5"], ["serve", "controller"]])
def test_commands_refuse_a_bad_config_with_one_line_and_exit_2(tmp_path, command):
    p = write(tmp_path, {"plan": {"repeat": 3}})
    r = run_cli(*command, "--config", str(p), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in err and "plan.repeat" in err and "repeats" in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_unwritable_output_is_refused_before_the_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("run", "--config", str(ROOT / "config/default.yaml"), "--out", str(blocker / "sub"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_replay_of_something_that_is_not_a_run_file(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not hdf5")
    r = run_cli("replay", str(bad), "--config", str(ROOT / "config/default.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_help_reads_well():
    for cmd in (["--help"], ["run", "--help"], ["replay", "--help"], ["serve", "--help"]):
        r = run_cli(*cmd, cwd=ROOT)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr


@pytest.mark.parametrize(
    ("role", "field"), [("controller", "endpoints.instrument"), ("reconstructor", "endpoints.frames")]
)
def test_a_role_on_its_own_needs_the_real_address_of_what_it_connects_to(tmp_path, role, field):
    r = run_cli("serve", role, cwd=tmp_path)
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr, r.stderr
