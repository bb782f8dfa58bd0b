"""The `ltemlive` command."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic import ValidationError

EPILOG = """\
Units are SI on input (metres, volts, radians). Defocus: positive = over-focus, where a positive phase
bump looks bright (docs/conventions.md).

examples:
  ltemlive run                                       a live session on the simulated instrument (config/default.yaml)
  ltemlive run --config my-session.yaml              the same with your plan / instrument
  ltemlive serve controller --config split.yaml      one role of a session, for deployments across hosts
  ltemlive control tcp://127.0.0.1:PORT pause        pause (resume, abort, freeze_feedback...) a running session
  ltemlive monitor tcp://HOST:PORT                   watch a running session in the terminal (PORT: its "watch" port)
  ltemlive dashboard tcp://HOST:PORT --control tcp://HOST:PORT2   the same in a web browser, with pause/abort
  ltemlive check-defocus --config instrument.yaml   measure the defocus sign and scale on a known feature
  ltemlive replay runs/demo-....h5                   reconstruct a recorded run again through the service
  ltemlive reprocess runs/*.h5 --workers 2           reconstruct every series again, in parallel on Dask
  ltemlive demo --out runs/demo                      simulate a series and reconstruct it (offline)
  ltemlive simulate --config config/simulate.yaml --out series.h5
  ltemlive reconstruct series.h5 --out results/       (or SERIES.tif with a SERIES.yaml sidecar)
  ltemlive tie series.h5 --out results-tie/
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reads "-2e-4" as a (negative) number, not as an option: argparse's own test for negative
    numbers misses scientific notation, so `--defocus -2e-4 2e-4` failed. Subcommand parsers inherit it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def _add_recon_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reconstruction")
    g.add_argument("--config", type=Path, help="YAML file with reconstruction settings (ReconstructionConfig)")
    g.add_argument("--device", default=None, help="cpu (default) or cuda")
    g.add_argument("--max-iter", type=int, default=None, help="cap on phase iterations (default 400)")
    g.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="GROUP",
        help="hold a group at its start value: phase, amplitude, defocus, theta_c, astigmatism, shifts, scales",
    )
    g.add_argument("--free", action="append", default=[], metavar="GROUP", help="refine a group (same names)")
    g.add_argument("--defocus-model", choices=["scale", "per_image"], default=None)
    g.add_argument("--padding", choices=["extend", "mirror", "zero", "periodic"], default=None)
    g.add_argument("--float64", action="store_true", help="compute in double precision")


def _add_key_options(p: argparse.ArgumentParser, default_key: str) -> None:
    g = p.add_argument_group("keys (a session secured with CURVE; docs/security.md)")
    g.add_argument("--keys", type=Path, default=None, help="the keyring folder (ltemlive keys)")
    g.add_argument("--key", default=default_key, help=f"your key's name in it (default {default_key})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ltemlive",
        description="ltemlive: live phase reconstruction and defocus feedback for Lorentz TEM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run a live session: instrument server, controller, reconstructor, publisher",
        description="Start every role of a live session as its own process, run the plan with live "
        "reconstruction and defocus feedback, write the run file and a summary. Ctrl-C stops cleanly.",
    )
    p.add_argument("--config", type=Path, default=None, help="session YAML (default: config/default.yaml if present)")
    p.add_argument("--out", type=Path, default=None, help="output folder (overrides session.output_dir)")
    p.add_argument("--repeats", type=int, default=None, help="number of series (overrides plan.repeats)")
    p.add_argument("--log-level", default="INFO", help="log level of the role processes (their logs go to files)")
    p.add_argument("--no-summary", action="store_true", help="do not write the summary pictures")

    p = sub.add_parser("serve", help="run one role of a session (instrument, controller, reconstructor, publisher)",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "control",
        help="send a command to a running session's controller (pause, resume, abort, feedback...)",
        description="Send one command to the controller of a running session and print its reply and the run "
        "status. ENDPOINT is the control endpoint ltemlive run prints at start (tcp://127.0.0.1:PORT).",
    )
    p.add_argument("endpoint", help="the controller's control endpoint, e.g. tcp://127.0.0.1:40123")
    p.add_argument(
        "action",
        choices=["status", "pause", "resume", "abort", "stop", "freeze_feedback", "unfreeze_feedback",
                 "reset_feedback"],
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply (default 5)")
    _add_key_options(p, "operator")

    from ltemlive.keys_cli import add_parser as _add_keys

    _add_keys(sub)

    p = sub.add_parser(
        "monitor",
        help="watch a running session in the terminal: state, progress, loss, defocus, calibration, alerts",
        description="Follow a running session's update stream in a live terminal view: run state, series "
        "progress, reconstruction loss, refined vs nominal defocus, the defocus calibration and alerts (no frame "
        "for N s, series aborted, reconstructor down, feedback rejected). ADDRESS is the publisher's snapshot "
        "address that ltemlive run prints as 'watch:' (tcp://HOST:PORT). Read-only. Ctrl-C leaves.",
    )
    p.add_argument("address", help="the publisher's snapshot address, e.g. tcp://microscope-pc:7106")
    p.add_argument("--no-frame-s", type=float, default=30.0,
                   help="alert when the run acquires but no frame arrived for this long (default 30 s)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for the publisher to answer before giving up (default 3)")
    p.add_argument("--once", action="store_true", help="print the current state once and exit (for scripts)")
    _add_key_options(p, "monitor")

    p = sub.add_parser(
        "dashboard",
        help="serve a web page that shows a running session live, with pause/resume/abort for the operator",
        description="Serve a web dashboard of a running session: the live phase, the colour-wheel induction "
        "map, the amplitude, the loss curve, the defocus and calibration history and the run state. Anyone who "
        "can reach the page sees it; pause, resume and abort need the operator token (printed at start, or "
        "--token / LTEMLIVE_DASHBOARD_TOKEN). With --keys, people log in with their key's login instead "
        "(ltemlive keys login NAME): operators command, monitors read; that is needed to serve beyond loopback. "
        "ADDRESS is the publisher's snapshot address ('watch:' in the output of ltemlive run).",
    )
    p.add_argument("address", help="the publisher's snapshot address, e.g. tcp://microscope-pc:7106")
    p.add_argument("--control", default=None,
                   help="the controller's control endpoint; without it the page is read-only")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to serve on (default 127.0.0.1; 0.0.0.0 for other machines, with --keys)")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0 picks a free one)")
    p.add_argument("--token", default=None,
                   help="operator token for the buttons (default: $LTEMLIVE_DASHBOARD_TOKEN or a random one)")
    p.add_argument("--no-frame-s", type=float, default=30.0, help="'no frame' alert after this long (default 30 s)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the publisher (default 3)")
    _add_key_options(p, "operator")

    p = sub.add_parser(
        "check-defocus",
        help="measure the instrument's defocus sign and scale from a +-df pair (before any feedback)",
        description="With the beam on a known, non-magnetic feature centred in the field of view and focused, "
        "acquire focus-DF, focus, focus+DF through the configured backend (its limits apply; the focus is "
        "restored) and measure the defocus sign (the feature's reconstructed phase) and scale (true / commanded, "
        "the AD reconstructor's refined defocus). Exit 0: consistent with the convention; 3: sign reversed or "
        "scale off by more than the tolerance; 4: inconclusive (no contrast); 1: instrument error; 2: bad input. "
        "See docs/first-session.md.",
    )
    p.add_argument("--config", type=Path, required=True, help="instrument YAML (backend: ...) or session YAML")
    p.add_argument("--defocus", type=float, default=1e-3, help="DF, the half-step around focus (m; default 1e-3)")
    p.add_argument("--exposure", type=float, default=1.0, help="exposure per image (s; default 1)")
    p.add_argument("--feature", choices=["particle", "hole"], default="particle",
                   help="what is centred: a particle (phase above its surroundings) or a hole in a film (below)")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest accepted |scale - 1| (default 0.05)")
    p.add_argument("--voltage-v", type=float, default=None, help="accelerating voltage (default: optics.voltage_v)")
    p.add_argument("--pixel-size-m", type=float, default=None, help="specimen pixel (default: the frames' own)")
    p.add_argument("--json", action="store_true", help="print the measurement as one JSON object")

    p = sub.add_parser(
        "replay",
        help="stream a recorded run file through the reconstructor service again",
        description="Serve the frames of RUNFILE on a frame stream, reconstruct every series with the "
        "reconstructor service (warm start and calibration carried from series to series, as live) and write "
        "a new run file with the same frames and the new reconstructions. RUNFILE is never modified.",
    )
    p.add_argument("runfile", type=Path, help="a run file written by ltemlive run")
    p.add_argument("--config", type=Path, default=None, help="session YAML for the reconstruction settings")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: next to RUNFILE)")
    p.add_argument("--max-iter", type=int, default=None, help="cap on phase iterations per series")

    p = sub.add_parser(
        "reprocess",
        help="reconstruct every series of run files or recorded series in parallel on a Dask cluster",
        description="Reconstruct every complete series of the given run files (and every recorded series file) "
        "again, one Dask task per series, on a local cluster of worker processes or on an existing Dask "
        "scheduler. Each result folder holds what `ltemlive reconstruct` writes, plus done.json (provenance: "
        "input, series, frame ids, config, worker, time), written last. A rerun skips the series that are done "
        "and redoes unfinished ones; a series that fails is reported and the others go on (exit code 1 if any "
        "failed). Each series is reconstructed on its own (no warm start from the previous one as in a live "
        "run), so the results do not depend on the order or the cluster: the same thread count gives the same "
        "bits. See docs/scale-out.md.",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="run files (.h5 written by ltemlive run), recorded series (.h5 from ltemlive simulate, "
                   ".tif + .yaml sidecar) or folders of them")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder: OUT/<input stem>/ (a run file: OUT/<stem>/series-NNNN/); default: "
                   "<input stem>-reprocessed/ next to each input")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: start a local cluster); "
                   "its workers need ltemlive installed and the inputs and outputs at the same paths")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the local cluster (default: cores / threads per worker; cuda: GPUs)")
    p.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                   help="torch threads per series (default 1; results are bit-identical for the same value)")
    p.add_argument("--device", default=None, help="cpu or cuda (cuda tasks need workers with a GPU resource)")
    p.add_argument("--config", type=Path, default=None,
                   help="ReconstructionConfig YAML (or a session YAML: its reconstruction section) for every "
                   "series (default: the config recorded in each run file, else the defaults)")
    p.add_argument("--max-iter", type=int, default=None, help="cap on phase iterations per series")
    p.add_argument("--force", action="store_true", help="redo series that are done already")

    p = sub.add_parser("demo", help="simulate a through-focus series on the virtual microscope and reconstruct it")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--sim-config", type=Path, default=None, help="simulation YAML (default: built-in demo)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument("--dose", type=float, default=100.0, help="electrons per pixel (default 100)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo in --out")
    _add_recon_options(p)

    p = sub.add_parser("simulate", help="write a simulated through-focus series with its ground truth")
    p.add_argument("--config", type=Path, default=None, help="simulation YAML (see config/simulate.yaml)")
    p.add_argument("--out", type=Path, required=True, help="output .h5 (or .tif: TIFF stack + YAML sidecar)")
    p.add_argument("--specimen", default=None, help="specimen name, e.g. resolution_pattern, vortex_disc")
    p.add_argument("--size", type=int, default=None, help="square image size in pixels")
    p.add_argument("--dose", type=float, default=None, help="electrons per pixel; omit for noise-free")
    p.add_argument("--defocus", type=float, nargs="+", default=None, metavar="M", help="nominal defocus (m)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (and its sidecar)")

    p = sub.add_parser("reconstruct", help="AD reconstruction of a recorded or simulated series")
    p.add_argument("series", type=Path, help="SERIES.h5 (ltemlive), SERIES.tif + SERIES.yaml, or DM/MRC/EMD")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    _add_recon_options(p)

    p = sub.add_parser("tie", help="transport-of-intensity reconstruction (fast, no refinement)")
    p.add_argument("series", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--q-cut", type=float, default=None, help="Tikhonov cut-off in cycles per pixel")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")

    p = sub.add_parser("instrument-server", help="serve a microscope backend over ZeroMQ", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _version() -> str:
    import ltemlive

    return f"ltemlive {ltemlive.__version__}"


def _recon_config(args):
    import yaml

    from ltemlive.reconstruct import ReconstructionConfig
    from ltemlive.reconstruct.config import FreeGroups

    data = {}
    if args.config is not None:
        try:
            data = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{args.config}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: expected a mapping of reconstruction settings")
    free = data.get("free") or {}
    if not isinstance(free, dict):
        raise ValueError(f"{args.config}: 'free' must map group names to true/false")
    free = dict(free)
    valid = list(FreeGroups.model_fields)
    unknown = [str(g) for g in (*free, *args.freeze, *args.free) if g not in valid]
    if unknown:
        raise ValueError(
            f"unknown parameter group(s) {', '.join(repr(g) for g in dict.fromkeys(unknown))}; "
            f"valid groups: {', '.join(valid)}"
        )
    for g in args.freeze:
        free[g] = False
    for g in args.free:
        free[g] = True
    if free:
        data["free"] = free
    if args.device:
        data["device"] = args.device
    if args.max_iter is not None:
        data["max_iter"] = args.max_iter
    if args.defocus_model:
        data["defocus_model"] = args.defocus_model
    if args.padding:
        data["padding"] = args.padding
    if args.float64:
        data["dtype"] = "float64"
    try:
        cfg = ReconstructionConfig.model_validate(data)
    except ValidationError as exc:
        from ltemlive.session.config import ConfigError, format_errors

        source = str(args.config) if args.config is not None else "command line"
        raise ConfigError(format_errors(exc, source, ReconstructionConfig)) from None
    if not re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device):
        raise ValueError(f"--device {cfg.device!r}: allowed values are cpu, cuda, cuda:N")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available here (use --device cpu)")
    return cfg


def _run_reconstruction(series, cfg, out: Path, console, *, overwrite: bool = False) -> None:
    import time

    from ltemlive.reconstruct import Reconstructor
    from ltemlive.storage.results import write_reconstruction

    rec = Reconstructor(series, cfg)
    # A bar in a terminal (short enough for 80 columns); plain periodic lines in a log file or a pipe.
    t0 = last = time.monotonic()
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]AD[/]"),
            BarColumn(bar_width=20),
            TextColumn("{task.completed:>4.0f}/{task.total:.0f}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        ) as progress:
            task = progress.add_task("reconstructing", total=cfg.max_iter, info="")
            for snap in rec.steps():
                mean_df = float(sum(snap.defocus_m) / len(snap.defocus_m))
                info = f"{snap.stage[:10]:<10} loss {snap.data_loss:.3e} df~{mean_df * 1e3:+.3f}mm"
                shown = info[: max(console.width - 45, 0)]
                progress.update(task, completed=min(snap.iteration, cfg.max_iter), info=shown)
    else:
        for snap in rec.steps():
            now = time.monotonic()
            if now - last >= 5.0 or snap.iteration == 0:
                last = now
                df = ", ".join(f"{d * 1e3:+.4f}" for d in snap.defocus_m)
                console.print(f"{now - t0:7.1f} s  it {snap.iteration:>4}/{cfg.max_iter}  {snap.stage:<13} "
                              f"loss {snap.data_loss:.4e}  df [{df}] mm", highlight=False, soft_wrap=True)
    result = rec.result()
    files = write_reconstruction(out, series, result, cfg, overwrite=overwrite)
    _report(console, series, result, files)


def _prepare_output(out: Path, overwrite: bool, names=None) -> None:
    """Before any work: the folder must be writable, and earlier results in it are kept unless --overwrite."""
    _writable(out)
    if names is None:
        from ltemlive.storage.results import existing_outputs

        found = existing_outputs(out)
    else:
        found = [out / n for n in names if (out / n).exists()]
    if found and not overwrite:
        shown = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise ValueError(f"{out}: holds results of an earlier run ({shown}); choose another --out or add --overwrite")


def _report(console, series, result, files) -> None:
    from rich.table import Table

    t = Table(title=f"refined parameters ({result.stopped_because}, {result.iterations} it, {result.elapsed_s:.1f} s)")
    for col in ("image", "nominal df (mm)", "refined df (mm)", "± (um)", "shift (px)"):
        t.add_column(col, justify="right")
    for i, (dn, d, s, sh) in enumerate(
        zip(result.defocus_nominal_m, result.defocus_m, result.defocus_sigma_m, result.shifts_px, strict=True)
    ):
        sig = f"{s * 1e6:.2f}" if s == s else "fixed"  # NaN: the group was frozen, not refined
        t.add_row(str(i), f"{dn * 1e3:+.4f}", f"{d * 1e3:+.4f}", sig, f"({sh[0]:+.2f}, {sh[1]:+.2f})")
    console.print(t)
    ts = result.theta_c_sigma_rad
    console.print(f"theta_c = {result.theta_c_rad:.3e}" + (f" ± {ts:.1e} rad" if ts == ts else " rad (fixed)"))
    gy, gx = result.ramp_rad_per_m
    if gy or gx:
        console.print(f"phase ramp (part of the phase): d/dy {gy * 1e-6:+.4f}, d/dx {gx * 1e-6:+.4f} rad/um")
    for w in result.warnings:
        console.print(f"[yellow]note:[/] {w}", highlight=False)
    if series.truth is not None:
        from ltemlive.metrics import phase_accuracy, phase_rmse

        acc_ad = phase_accuracy(result.phase, series.truth.phase)
        acc_tie = phase_accuracy(result.tie_phase, series.truth.phase)
        console.print(
            f"against the simulator's truth: accuracy AD {acc_ad:.4f} (TIE {acc_tie:.4f}), "
            f"RMSE AD {phase_rmse(result.phase, series.truth.phase):.3f} rad"
        )
        err = (result.defocus_m / series.truth.defocus_m - 1) * 100
        console.print("defocus error vs truth (%): " + ", ".join(f"{e:+.2f}" for e in err))
    console.print("wrote: " + ", ".join(sorted(files)))


def cmd_demo(args, console) -> int:
    from ltemlive.sim_bridge import simulate
    from ltemlive.storage import write_series_h5
    from simulator.series import SimulationConfig

    if args.sim_config:
        sim_cfg = _simulation_config(args.sim_config)
    else:
        sim_cfg = SimulationConfig(shape=(args.size, args.size), dose_e_per_px=args.dose, drift_px_per_frame=1.0)
    cfg = _recon_config(args)
    _prepare_output(args.out, args.overwrite)
    h, w = sim_cfg.shape
    console.print(f"[bold]simulating[/] {sim_cfg.specimen} {h}x{w}, dose {sim_cfg.dose_e_per_px} e/px")
    series = simulate(sim_cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    write_series_h5(args.out / "series.h5", series)
    from ltemlive import pictures

    pictures.save_series_png(
        args.out / "series.png", series.images, series.defocus_m, series.pixel_size_m,
        counts=series.dose_e_per_px is not None,
    )
    _run_reconstruction(series, cfg, args.out, console, overwrite=True)  # checked above; series.h5 is ours
    return 0


def _simulation_config(path: Path):
    """A simulation YAML, with errors that name the file and the field."""
    import yaml

    from ltemlive.session.config import ConfigError, format_errors
    from simulator.series import SimulationConfig

    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of simulation settings")
    try:
        return SimulationConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, str(path), SimulationConfig)) from None


def cmd_simulate(args, console) -> int:
    from ltemlive.sim_bridge import simulate
    from ltemlive.storage import write_series_h5, write_series_tiff
    from simulator.series import SimulationConfig

    data = {}
    if args.config:
        data = _simulation_config(args.config).model_dump()
    for key, val in (("specimen", args.specimen), ("dose_e_per_px", args.dose), ("seed", args.seed)):
        if val is not None:
            data[key] = val
    if args.size is not None:
        data["shape"] = (args.size, args.size)
    if args.defocus is not None:
        data["defocus_m"] = args.defocus
    suffix = args.out.suffix.lower()
    if suffix not in (".h5", ".hdf5", ".tif", ".tiff"):
        raise ValueError(f"--out {args.out}: the suffix must be .h5/.hdf5 (HDF5) or .tif/.tiff (TIFF + YAML sidecar)")
    targets = [args.out] + ([args.out.with_suffix(".yaml")] if suffix in (".tif", ".tiff") else [])
    taken = [str(t) for t in targets if t.exists()]
    if taken and not args.overwrite:
        raise ValueError(f"{', '.join(taken)}: exists; choose another --out or add --overwrite")
    _writable(args.out.parent if str(args.out.parent) else Path("."))
    try:
        sim_cfg = SimulationConfig.model_validate(data)
    except ValidationError as exc:
        from ltemlive.session.config import ConfigError, format_errors

        raise ConfigError(format_errors(exc, "command line", SimulationConfig)) from None
    series = simulate(sim_cfg)
    if args.out.suffix.lower() in (".tif", ".tiff"):
        write_series_tiff(args.out, series)
    else:
        write_series_h5(args.out, series)
    console.print(f"wrote {args.out} ({series.n_images} images {series.shape[0]}x{series.shape[1]})")
    return 0


def cmd_reconstruct(args, console) -> int:
    from ltemlive.storage import read_series

    cfg = _recon_config(args)
    series = read_series(args.series)  # the input first (quick), then the output, then the work
    _prepare_output(args.out, args.overwrite)
    _run_reconstruction(series, cfg, args.out, console, overwrite=args.overwrite)
    return 0


def cmd_tie(args, console) -> int:
    import numpy as np

    from ltemlive import pictures
    from ltemlive.induction import induction_map, save_induction_png
    from ltemlive.storage import read_series
    from ltemlive.storage.tiff import write_tiff
    from ltemlive.tie import tie_reconstruct

    outputs = ("phase.tif", "induction_bx_t.tif", "induction_by_t.tif", "phase.png", "induction.png")
    s = read_series(args.series)
    _prepare_output(args.out, args.overwrite, outputs)  # before the work
    if args.q_cut is not None and not (0 < args.q_cut <= 0.5):
        raise ValueError(f"--q-cut {args.q_cut}: allowed 0 < q <= 0.5 cycles per pixel")
    q = None if args.q_cut is None else args.q_cut / s.pixel_size_m
    res = tie_reconstruct(s.images, s.defocus_m, s.pixel_size_m, s.microscope.voltage_v, tikhonov_q_cut=q)
    phase = res.phase.cpu().numpy()
    px = s.pixel_size_m
    desc = {"software": "ltemlive tie", "method": res.method, "source": str(args.series), "pixel_size_m": px}
    write_tiff(args.out / "phase.tif", phase.astype(np.float32), px, description={**desc, "quantity": "phase (rad)"},
               unit_label="rad", overwrite=True)
    bx, by = induction_map(phase, px)
    for name, arr in (("induction_bx_t.tif", bx), ("induction_by_t.tif", by)):
        write_tiff(args.out / name, np.asarray(arr, dtype=np.float32), px,
                   description={**desc, "quantity": f"{name[10:12]}*t (T*m)"}, unit_label="T*m", overwrite=True)
    pictures.save_phase_png(args.out / "phase.png", phase, px, f"TIE phase ({res.method})")
    save_induction_png(args.out / "induction.png", bx, by, px)
    console.print(f"TIE ({res.method}) -> {args.out}: {', '.join(outputs)}")
    return 0


def _session_config(args):
    from ltemlive.session.config import check_everything, load_run_config

    path = args.config
    if path is None and Path("config/default.yaml").is_file():
        path = Path("config/default.yaml")
    overrides = {}
    cfg = load_run_config(path)
    source = str(path) if path else "defaults"
    if getattr(args, "out", None) is not None:
        overrides["session"] = {**cfg.session.model_dump(), "output_dir": args.out}
    if getattr(args, "repeats", None) is not None:
        overrides["plan"] = {**cfg.plan.model_dump(), "repeats": args.repeats}
    if overrides:
        from ltemlive.session.config import ConfigError, RunConfig, format_errors

        try:
            cfg = RunConfig.model_validate({**cfg.model_dump(), **overrides})
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, "command line", RunConfig)) from None
    check_everything(cfg, source)
    _writable(cfg.session.output_dir)
    return cfg


def _writable(folder: Path) -> None:
    """Fail before the work, not after it: the output folder must exist or be creatable, and be writable."""
    import os
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{folder}: cannot write there ({exc.strerror or exc})") from None


def cmd_run(args, console) -> int:
    from ltemlive.session.launch import run_session

    cfg = _session_config(args)
    return run_session(cfg, console, log_level=args.log_level, summary=not args.no_summary)


def cmd_control(args, console) -> int:
    from ltemlive.controller.client import ControlClient, ControllerUnreachable
    from ltemlive.session.config import _endpoint

    try:
        _endpoint(args.endpoint)
    except ValueError as exc:
        raise ValueError(f"endpoint: {exc}") from None
    with ControlClient(args.endpoint, timeout_s=args.timeout) as client:
        try:
            reply = client.command(args.action)
        except ControllerUnreachable as exc:
            raise ValueError(str(exc)) from None
    st = reply.status
    console.print(f"{'ok' if reply.ok else 'refused'}: {reply.message}")
    cal = st.get("calibration") or {}
    console.print(
        f"run {st.get('run_id')}: {st.get('state')}, series {st.get('series_index')} frame {st.get('frame_index')}, "
        f"{st.get('frames_written')} frames; calibration scale {cal.get('scale', float('nan')):.5f}, offset "
        f"{cal.get('offset_m', 0.0) * 1e6:+.2f} um{' (frozen)' if st.get('feedback_frozen') else ''}"
    )
    return 0 if reply.ok else 1


def cmd_keys(args, console) -> int:
    from ltemlive.keys_cli import run

    return run(args, console)


def cmd_monitor(args, console) -> int:
    from ltemlive.monitor.terminal import run_monitor

    return run_monitor(args, console)


def cmd_dashboard(args, console) -> int:
    from ltemlive.dashboard.server import run_dashboard

    return run_dashboard(args, console)


def cmd_check_defocus(args, console) -> int:
    import json

    from drivers.errors import InstrumentError
    from drivers.factory import load_config
    from ltemlive.checks.defocus import acquire_and_check

    try:
        check = acquire_and_check(
            load_config(args.config), defocus_m=args.defocus, exposure_s=args.exposure, feature=args.feature,
            scale_tolerance=args.tolerance, voltage_v=args.voltage_v, pixel_size_m=args.pixel_size_m,
        )
    except InstrumentError as exc:
        console.print(f"[red]instrument error:[/] {type(exc).__name__}: {exc}")
        return 1
    console.print(json.dumps(check.as_dict()) if args.json else check.report(), markup=False, soft_wrap=True)
    return check.exit_code


def cmd_replay(args, console) -> int:
    from ltemlive.session.replay import replay

    cfg = _session_config(args)
    return replay(args.runfile, cfg, console, out_dir=args.out, max_iter=args.max_iter)


def cmd_reprocess(args, console) -> int:
    from ltemlive.batch import reprocess

    report = reprocess(
        args.inputs, console, out=args.out, scheduler=args.scheduler, workers=args.workers,
        threads_per_worker=args.threads_per_worker, device=args.device, config=args.config,
        max_iter=args.max_iter, force=args.force,
    )
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.markup import escape

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from ltemlive.session.roles import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["instrument-server"]:
        # The server has its own parser (drivers/server.py); hand it everything, --help included.
        from drivers.server import main as server_main

        return server_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from loguru import logger

    # The library's own log lines are for the services' log files; at the console only warnings (all with --debug).
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if args.debug else "WARNING", diagnose=False,
               format="{time:HH:mm:ss} {level: <7} {message}")
    console = Console(stderr=False)
    errors = Console(stderr=True, soft_wrap=True)  # errors on stderr, unwrapped (paths stay whole)
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "keys", None) is not None and args.command in ("control", "monitor", "dashboard"):
        from ltemlive.wire import security

        try:
            security.configure(args.keys, args.key)
        except security.SecurityError as exc:
            errors.print(f"[red]error:[/] {escape(str(exc))}")
            return 2
    handlers = {
        "run": cmd_run,
        "check-defocus": cmd_check_defocus,
        "replay": cmd_replay,
        "reprocess": cmd_reprocess,
        "control": cmd_control,
        "keys": cmd_keys,
        "monitor": cmd_monitor,
        "dashboard": cmd_dashboard,
        "demo": cmd_demo,
        "simulate": cmd_simulate,
        "reconstruct": cmd_reconstruct,
        "tie": cmd_tie,
    }
    try:
        return handlers[args.command](args, console)
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/]")
        return 130
    except Exception as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        if isinstance(exc, ValidationError):
            errors.print(f"[red]error:[/] invalid settings:\n{escape(str(exc))}")
        elif isinstance(exc, ValueError | OSError):
            errors.print(f"[red]error:[/] {escape(str(exc))}")
        else:  # a bug, not bad input: one line, the traceback on request
            errors.print(f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (--debug shows where)")
            return 1
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
