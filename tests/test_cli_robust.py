"""What a new user trips over (issue 10): work lost, tracebacks, silent progress, stale docs. Each case gives
one clear line and exit 2 before any long computation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ltemlive.reconstruct import ReconstructionConfig, reconstruct
from ltemlive.sim_bridge import simulate
from simulator.series import SimulationConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def cli(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "ltemlive.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-1500:])
    err = r.stderr.strip()
    assert "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture(scope="module")
def series_h5(tmp_path_factory):
    d = tmp_path_factory.mktemp("s")
    p = d / "series.h5"
    r = cli("simulate", "--out", p, "--size", 32, "--specimen", "vortex_disc", "--defocus", -1e-4, 1e-4)
    assert r.returncode == 0, r.stderr
    return p


def test_unwritable_out_is_refused_before_the_reconstruction(series_h5, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("reconstruct", series_h5, "--out", blocker / "sub", "--max-iter", 400)
    one_line_error(r, "cannot write")
    assert "it " not in r.stdout  # no iteration ran


def test_earlier_results_are_kept_unless_overwrite(series_h5, tmp_path):
    out = tmp_path / "o"
    assert cli("tie", series_h5, "--out", out).returncode == 0
    before = (out / "phase.tif").read_bytes()
    one_line_error(cli("tie", series_h5, "--out", out), "--overwrite")
    assert (out / "phase.tif").read_bytes() == before
    assert cli("tie", series_h5, "--out", out, "--overwrite").returncode == 0
    for name in ("induction_bx_t.tif", "induction_by_t.tif"):  # tie writes the induction maps too
        assert (out / name).exists()


def test_simulate_never_overwrites_and_checks_the_suffix(tmp_path):
    side = tmp_path / "x.yaml"
    side.write_text("precious: true\n")
    one_line_error(cli("simulate", "--out", tmp_path / "x.tif", "--size", 16), "x.yaml", "--overwrite")
    assert side.read_text() == "precious: true\n"
    one_line_error(cli("simulate", "--out", tmp_path / "s.png", "--size", 16), ".h5", ".tif")
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["instrument-server", "--config", "nope.yaml"], ["nope.yaml", "no such config file"]),
        (["instrument-server", "--config-json", "{bad"], ["--config-json"]),
        (["instrument-server", "--config-json", '{"backend": "hitachi"}'], ["backend", "simulated", "jeol"]),
        (["reconstruct", "x.h5", "--out", "o", "--device", "gpu"], ["--device", "cpu, cuda"]),
        (["control", "http://x", "status"], ["endpoint", "tcp://"]),
    ],
)
def test_one_line_errors(tmp_path, args, words):
    one_line_error(cli(*args, cwd=tmp_path), *words)


def test_bad_yaml_for_the_instrument_server(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: [unclosed\n")
    one_line_error(cli("instrument-server", "--config", bad, cwd=tmp_path), "bad.yaml")


def test_max_iter_is_the_cap():
    s = simulate(SimulationConfig(shape=(32, 32), specimen="vortex_disc", defocus_m=[-1e-4, 1e-4], seed=1))
    for cap in (1, 3, 7):
        assert reconstruct(s, ReconstructionConfig(max_iter=cap)).iterations <= cap + 1


def test_progress_appears_in_a_log_file(series_h5, tmp_path):
    r = cli("reconstruct", series_h5, "--out", tmp_path / "o", "--max-iter", 20, "--freeze", "theta_c")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if re.search(r"\bit +\d+/20\b", ln)]
    assert lines, r.stdout  # plain progress lines when stdout is not a terminal
    assert "fixed" in r.stdout and "nan" not in r.stdout.lower()  # a frozen parameter is not "± nan"


def test_docs_and_makefile_name_only_what_exists():
    """Every file path and `ltemlive` subcommand named in README, docs/ and the Makefile exists."""
    files = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("docs/**/*.md")]
    texts = {p: p.read_text(encoding="utf-8") for p in files}
    missing = []
    pattern = re.compile(r"(?<![\w/.-])((?:config|docs|bench|tests|scripts|ltemlive|drivers|simulator)/[\w./-]*\w)")
    for path, text in texts.items():
        for ref in set(pattern.findall(text)):
            ref = ref.rstrip(".")
            if "*" in ref or "…" in ref or "<" in ref:
                continue
            if not any((ROOT / (ref + ext)).exists() for ext in ("", ".py", ".md")) and not list(ROOT.glob(ref + "*")):
                missing.append(f"{path.relative_to(ROOT)} names {ref}")
    help_text = cli("--help").stdout
    commands = set(re.findall(r"^    (\w[\w-]*)\s", help_text, re.M)) | {"serve", "instrument-server"}
    for path, text in texts.items():
        # a command in code: `ltemlive CMD ...` or a line of a code block starting with it
        named = re.findall(r"`ltemlive ([a-z][a-z-]+)\b", text)
        for block in re.findall(r"```.*?```", text, re.S):
            named += re.findall(r"^\s*ltemlive ([a-z][a-z-]+)\b", block, re.M)
        for cmd in set(named):
            if cmd not in commands and cmd not in ("run",):
                missing.append(f"{path.relative_to(ROOT)} names `ltemlive {cmd}`")
    assert "run" in commands
    assert missing == []


def test_received_frames_are_read_only_views_as_documented():
    from ltemlive import wire

    h, buf = wire.encode_array(np.arange(16, dtype=np.float32).reshape(4, 4))
    a = wire.decode_array(h, bytearray(buf))  # a writable buffer, as zmq hands out
    assert not a.flags.writeable


def test_simulation_config_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "sim.yaml"
    bad.write_text("specimen: vortex_disc\nshape: [64, 64]\ndose_e_per_pix: 10\n")
    one_line_error(cli("simulate", "--config", bad, "--out", tmp_path / "s.h5", cwd=tmp_path),
                   "sim.yaml", "dose_e_per_pix", "did you mean 'dose_e_per_px'")
