"""``ltemlive reprocess``: every series of some run files / recorded series, reconstructed on a Dask cluster.

The client finds the work (ltemlive.batch.items, metadata only), skips what is done (``done.json`` in the result
folder, unless ``force``), and submits one task per series: :func:`ltemlive.batch.task.process_item` with a small
:class:`WorkItem`; each worker reads its own data, so no image goes through the scheduler. Results come back in
the order they finish (``as_completed``); a failed series is one line and the batch goes on. The cluster is a
``LocalCluster`` of single-threaded worker processes unless a scheduler address is given. Nothing here starts
a cluster at import time: ``distributed`` is imported when a batch runs.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from ltemlive.batch.items import Discovery, WorkItem, discover, one_line
from ltemlive.batch.task import done_record, process_item

#: seconds to reach an existing scheduler before giving up (a typo'd address should fail fast, not in 30 s)
SCHEDULER_TIMEOUT_S = 5.0
_ADDRESS = re.compile(r"^((tcp|tls|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+$|^inproc://\S+$")


@dataclass
class BatchReport:
    """What a batch did (also what :func:`reprocess` bases its exit code on)."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    not_eligible: list[tuple[str, str]] = field(default_factory=list)
    wall_s: float = 0.0  # everything, cluster start-up and shut-down included
    work_s: float = 0.0  # first task submitted to last result in: what series per minute is measured over
    cluster: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def default_workers(threads_per_worker: int, device: str) -> int:
    """One worker per GPU for cuda; else as many as the cores allow at threads_per_worker each."""
    if device.startswith("cuda"):
        import torch

        return max(1, torch.cuda.device_count())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // threads_per_worker)


def reprocess(
    inputs: list[str | Path],
    console,
    *,
    out: Path | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    device: str | None = None,
    config: Path | None = None,
    max_iter: int | None = None,
    force: bool = False,
) -> BatchReport:
    """Run a batch; print progress and a summary on ``console`` (a rich Console). Usage errors (missing input,
    bad config, unreachable scheduler) raise ValueError before any series starts."""
    from ltemlive.batch.config import load_config_file, overrides_of

    if threads_per_worker < 1:
        raise ValueError(f"--threads-per-worker {threads_per_worker}: must be at least 1")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: must be at least 1")
    if scheduler is not None and workers is not None:
        raise ValueError("--workers sizes the local cluster; with --scheduler the cluster's own workers are used")
    if scheduler is not None and not _ADDRESS.match(scheduler):
        raise ValueError(f"--scheduler {scheduler!r}: not a scheduler address; use tcp://HOST:PORT (e.g. "
                         "tcp://10.0.0.5:8786, as `dask scheduler` prints)")
    overrides = overrides_of(max_iter, device)
    base = load_config_file(config) if config is not None else None
    found = discover(inputs, out=out, config=base, config_source=str(config) if config else "", overrides=overrides)
    report = BatchReport(not_eligible=list(found.not_eligible))
    report.failed = [{"label": label, "status": "failed", "reason": why} for label, why in found.broken]
    todo = _split_done(found, report, force)
    _check_writable(todo)
    _print_plan(console, found, report, todo)
    t0 = time.perf_counter()
    if todo:
        gpu = any(_wants_gpu(it) for it in todo)
        _run_on_cluster(todo, report, console, scheduler=scheduler, workers=workers, threads=threads_per_worker,
                        device="cuda" if gpu else "cpu", force=force)
    report.wall_s = time.perf_counter() - t0
    print_summary(console, report)
    return report


def _wants_gpu(item: WorkItem) -> bool:
    return str(item.config.get("device", "cpu")).startswith("cuda")


def _split_done(found: Discovery, report: BatchReport, force: bool) -> list[WorkItem]:
    """Skip on the client what is finished (no task for it); note when it was made with other settings."""
    todo = []
    for it in found.items:
        rec = None if force else done_record(it.out_dir)
        if rec is None:
            todo.append(it)
            continue
        note = "done before"
        # the device is left out: a plain "cuda" is recorded as the worker's cuda:N
        if {**(rec.get("config") or {}), "device": None} != {**it.config, "device": None}:
            note += " with other settings (--force redoes it)"
        report.skipped.append({"label": it.label, "status": "skipped", "reason": note, "out_dir": it.out_dir})
    return todo


def _check_writable(items: list[WorkItem]) -> None:
    """Fail before the work: every result root must be creatable and writable (here, and so, on a shared file
    system, for the workers)."""
    import tempfile

    for root in dict.fromkeys(str(Path(it.out_dir).parent if it.series_index is not None else Path(it.out_dir))
                              for it in items):
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=root, prefix=".write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ValueError(f"{root}: cannot write results there ({exc.strerror or exc}); choose --out") from None


def _print_plan(console, found: Discovery, report: BatchReport, todo: list[WorkItem]) -> None:
    n = len(found.items)
    console.print(f"[bold]reprocess[/]: {n} series found, {len(todo)} to do, {len(report.skipped)} done before"
                  + (f", {len(report.not_eligible)} not complete in the run file" if report.not_eligible else "")
                  + (f", {len(report.failed)} input(s) unreadable" if report.failed else ""), highlight=False)
    for label, why in report.not_eligible:
        console.print(f"  not reprocessed: {escape(label)}: {escape(why)}", highlight=False, soft_wrap=True)
    for r in report.skipped:  # plain "done before" is only counted; settings that changed are worth a line
        if r["reason"] != "done before":
            console.print("  " + _line(r), highlight=False, soft_wrap=True)
    for r in report.failed:
        console.print("  " + _line(r), highlight=False, soft_wrap=True)


def _connect(stack: ExitStack, scheduler: str | None, workers: int | None, threads: int, device: str):
    """A Client on the given scheduler, or on a LocalCluster of single-threaded worker processes (one series at
    a time each; torch then uses `threads` threads inside the task)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = stack.enter_context(Client(scheduler, timeout=SCHEDULER_TIMEOUT_S))
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"--scheduler {scheduler}: no Dask scheduler answered within "
                             f"{SCHEDULER_TIMEOUT_S:g} s ({one_line(exc)})") from None
        except Exception as exc:  # something else listens there: its bytes misread as Dask frames
            raise ValueError(f"--scheduler {scheduler}: what answers there is not a Dask scheduler "
                             f"({type(exc).__name__}: {one_line(exc)[:200]})") from None
        if device.startswith("cuda"):
            info = client.scheduler_info(n_workers=-1)["workers"].values()
            if not any((w.get("resources") or {}).get("GPU") for w in info):
                raise ValueError(f"--device {device}: no worker of {scheduler} offers a GPU; start GPU workers "
                                 "with `dask worker ADDRESS --nthreads 1 --resources GPU=1`")
        workers_info = client.scheduler_info(n_workers=-1)["workers"]
        n = len(workers_info)
        many = sorted({w.get("nthreads", 1) for w in workers_info.values()} - {1})
        if many:  # torch's thread count is per process: concurrent series in one worker would share it
            from loguru import logger

            logger.warning("{} has workers with {} threads: they run that many series at once in one process; "
                           "start workers with --nthreads 1 (and --threads-per-worker for torch)", scheduler,
                           "/".join(map(str, many)))
        if n == 0:
            from loguru import logger

            logger.warning("{} has no workers yet: the series wait until workers join", scheduler)
        return client, f"scheduler {scheduler} ({n} workers)"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    n = workers or default_workers(threads, device)
    # Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's dynamic
    # mmap threshold: every large torch buffer is then mmap'd and unmapped again, and a reconstruction took
    # twice as long as in a plain process (measured: 2.2 s vs 1.2 s per 64x64 series). Unset for our workers.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = stack.enter_context(LocalCluster(
            # The scheduler serves HTTP even without a dashboard, by default on :8787 (clashes with any other
            # cluster): a free loopback port instead.
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR, resources={"GPU": 1} if device.startswith("cuda") else None,
        ))
    client = stack.enter_context(Client(cluster))
    return client, f"local cluster: {n} worker process(es) x {threads} torch thread(s)"


def _run_on_cluster(todo: list[WorkItem], report: BatchReport, console, *, scheduler, workers, threads, device,
                    force) -> None:
    from distributed import as_completed

    with ExitStack() as stack:
        console.print("starting a local Dask cluster ..." if scheduler is None else f"connecting to {scheduler} ...",
                      highlight=False)
        client, report.cluster = _connect(stack, scheduler, workers, threads, device)
        console.print(f"running on {report.cluster}", highlight=False)
        # GPU tasks ask for the "GPU" resource, so that only workers that declare one take them.
        t_submit = time.perf_counter()
        futures = {
            client.submit(process_item, it, threads=threads, force=force, pure=False,
                          resources={"GPU": 1} if _wants_gpu(it) else None,
                          key=f"reprocess-{i:05d}-{Path(it.out_dir).name}-{os.urandom(3).hex()}"): it
            for i, it in enumerate(todo)
        }
        with _Progress(console, len(todo)) as progress:
            for fut in as_completed(futures):
                it = futures[fut]
                try:
                    rec = fut.result()
                except Exception as exc:  # the task never returned: its worker died (KilledWorker), cancelled
                    rec = {"label": it.label, "status": "failed", "reason": f"{type(exc).__name__}: {one_line(exc)}"}
                fut.release()
                {"ok": report.done, "skipped": report.skipped}.get(rec["status"], report.failed).append(rec)
                progress.finished(rec)
        report.work_s = time.perf_counter() - t_submit


class _Progress:
    """A rich bar on a terminal; one plain line per finished series elsewhere (log files, pipes)."""

    def __init__(self, console, total: int):
        self.console, self.total, self.n = console, total, 0
        self.t0 = time.perf_counter()
        self._bar = None

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]reprocess[/]"), BarColumn(bar_width=30), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"), console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("series", total=self.total, info="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def finished(self, rec: dict[str, Any]) -> None:
        self.n += 1
        line = _line(rec)
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=rec["label"][:40])
            if rec["status"] == "failed":  # successes show in the bar; failures must stay on screen
                self._bar.console.print(line, highlight=False, soft_wrap=True)
        else:
            t = time.perf_counter() - self.t0
            self.console.print(f"[{self.n:>{len(str(self.total))}}/{self.total}] {t:7.1f} s  {line}",
                               highlight=False, soft_wrap=True)


def _line(rec: dict[str, Any]) -> str:
    """One line of console markup; names and reasons escaped (a "[...]" in a path is not markup)."""
    label, reason = escape(str(rec["label"])), escape(str(rec.get("reason", "")))
    if rec["status"] == "failed":
        return f"[red]FAILED[/] {label}: {reason}"
    if rec["status"] == "skipped":
        return f"skipped {label}: {reason}"
    worker = rec.get("dask_worker") or "in-process"
    return (f"ok {label} in {rec['elapsed_s']:.1f} s ({rec.get('iterations')} it, "
            f"{rec.get('stopped_because')}; {worker}) -> {escape(str(rec['out_dir']))}")


def print_summary(console, report: BatchReport) -> None:
    from rich.table import Table

    minutes = report.work_s / 60
    rate = f"{len(report.done) / minutes:.1f}" if report.done and minutes > 0 else "-"
    t = Table(title="reprocess summary", show_header=True)
    for col in ("done", "skipped", "failed", "not complete", "time", "series / min"):
        t.add_column(col, justify="right")
    t.add_row(str(len(report.done)), str(len(report.skipped)), str(len(report.failed)),
              str(len(report.not_eligible)), f"{report.wall_s:.1f} s ({report.work_s:.1f} s on the cluster)", rate)
    console.print(t)
    if report.failed:
        console.print("failed:", highlight=False)
        for r in report.failed:
            console.print(f"  {escape(r['label'])}: {escape(r['reason'])}", highlight=False, soft_wrap=True)
