"""The configuration of a live session (config/default.yaml), validated before anything starts.

One file describes every role, so a whole session (``ltemlive run``) and a split deployment (``ltemlive serve
ROLE`` on several hosts, config/split-*.yaml) read the same sections:

    session        name and output folder
    instrument     what the instrument server serves (drivers.factory: backend, limits, simulated/thermo/jeol)
    endpoints      where each socket is reached (the role that owns it binds it, the others connect)
    bind           optional bind addresses where they differ from the reachable ones (tcp://0.0.0.0:7101)
    plan           the acquisition plan (ltemlive.controller.plan.Plan)
    feedback       the defocus feedback rule (ltemlive.controller.feedback.FeedbackConfig)
    controller     controller settings
    reconstructor  reconstructor service settings
    reconstruction the AD reconstruction (ltemlive.reconstruct.config.ReconstructionConfig)
    publisher      the results publisher (ltemlive.publisher.PublisherConfig; its endpoints come from here)

Every error names the file, the field and what is allowed, in one line per problem (:class:`ConfigError`).
Importing this module does not import torch: the controller's host need not have it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ltemlive import wire
from ltemlive.controller.feedback import FeedbackConfig
from ltemlive.controller.plan import Plan
from ltemlive.publisher.publisher import PublisherConfig
from ltemlive.recon_service.config import ReconstructorServiceConfig

__all__ = ["ConfigError", "RunConfig", "check_everything", "load_run_config"]

ROLES = ("instrument", "controller", "reconstructor", "publisher")
_ENDPOINT = re.compile(r"^(tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\*|\d{1,5})|ipc://[^\0]{1,200})$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (file: field: what is wrong; allowed values)."""


def _endpoint(v: str) -> str:
    if not isinstance(v, str) or not _ENDPOINT.match(v):
        raise ValueError(f"{v!r} is not an endpoint; use tcp://HOST:PORT (PORT may be * for a free one) or ipc://PATH")
    return v


Endpoint = Annotated[str, Field(description="tcp://HOST:PORT or ipc://PATH")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionSection(_Section):
    name: Annotated[str, Field(pattern=wire.ID_PATTERN.pattern)] = Field(
        "demo", description="session name: run files are <output_dir>/<name>-<time>-<id>.h5"
    )
    output_dir: Path = Field(Path("runs"), description="folder for run files, summaries and the run state")


class Endpoints(_Section):
    """Where each socket is reached. Loopback by default; port * binds a free port (``ltemlive run`` passes the
    real one to the other roles; a split deployment needs fixed ports)."""

    instrument: Endpoint = "tcp://127.0.0.1:*"
    frames: Endpoint = "tcp://127.0.0.1:*"
    control: Endpoint = "tcp://127.0.0.1:*"
    ingest: Endpoint = "tcp://127.0.0.1:*"
    updates: Endpoint = "tcp://127.0.0.1:*"
    snapshot: Endpoint = "tcp://127.0.0.1:*"

    @field_validator("*")
    @classmethod
    def _check(cls, v: str) -> str:
        return _endpoint(v)


class Binds(_Section):
    instrument: Endpoint | None = None
    frames: Endpoint | None = None
    control: Endpoint | None = None
    ingest: Endpoint | None = None
    updates: Endpoint | None = None
    snapshot: Endpoint | None = None

    @field_validator("*")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        return None if v is None else _endpoint(v)


class ControllerSection(_Section):
    instrument_mode: Literal["remote", "in_process"] = Field(
        "remote", description="remote: through the instrument server (endpoints.instrument); in_process: the "
        "backend inside the controller (rehearsals, tests)"
    )
    instrument_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        30.0, description="deadline of one instrument call through the server"
    )
    drain_timeout_s: Annotated[float, Field(ge=0, le=86_400)] = Field(
        600.0, description="after the plan, wait this long for the reconstructions still running"
    )
    cache_mb: Annotated[int, Field(ge=1, le=1 << 20)] = Field(
        512, description="frames kept in memory for replay; older ones are read back from the run file"
    )
    peer_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        5.0, description="a reconstructor silent this long loses its series to the next one"
    )


class SecuritySection(_Section):
    """CURVE on every channel (docs/security.md). Off (no keys_dir): every socket must be loopback-only."""

    keys_dir: Path | None = Field(
        None, description="keyring folder (ltemlive keys create NAME --role ROLE): each role uses its own key - "
        "instrument, controller, publisher, the reconstructor's worker name - and lets in only keys found here"
    )


#: the key each role uses (the reconstructor: its worker name)
ROLE_KEYS = {"instrument": "instrument", "controller": "controller", "publisher": "publisher"}
#: what each role binds (its sockets' endpoints)
BINDS = {
    "instrument": ("instrument",),
    "controller": ("frames", "control"),
    "publisher": ("ingest", "updates", "snapshot"),
}


class OpticsSection(_Section):
    """The microscope's optics as the reconstructor needs them (for the simulated instrument they default to
    its simulation's values)."""

    voltage_v: Annotated[float, Field(gt=1e3, le=3e6, allow_inf_nan=False)] = Field(
        description="accelerating voltage (V)"
    )
    cs_m: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = Field(
        1e-3, description="spherical aberration (m)"
    )
    theta_c_rad: Annotated[float, Field(ge=0, le=1e-2, allow_inf_nan=False)] = Field(
        1e-5, description="beam divergence semi-angle, the start value (rad)"
    )
    focal_spread_m: Annotated[float, Field(ge=0, le=1e-4, allow_inf_nan=False)] = Field(
        100e-9, description="focal spread (m)"
    )


class RunConfig(_Section):
    session: SessionSection = Field(default_factory=SessionSection)
    instrument: dict[str, Any] = Field(default_factory=lambda: {"backend": "simulated"})
    optics: OpticsSection | None = None
    endpoints: Endpoints = Field(default_factory=Endpoints)
    bind: Binds = Field(default_factory=Binds)
    plan: Plan = Field(default_factory=Plan)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    controller: ControllerSection = Field(default_factory=ControllerSection)
    reconstructor: ReconstructorServiceConfig = Field(default_factory=ReconstructorServiceConfig)
    reconstruction: dict[str, Any] = Field(default_factory=dict)
    publisher: PublisherConfig = Field(default_factory=PublisherConfig)
    security: SecuritySection = Field(default_factory=SecuritySection)

    def key_name(self, role: str) -> str:
        return self.reconstructor.worker if role == "reconstructor" else ROLE_KEYS[role]

    def bind_address(self, name: str) -> str:
        return getattr(self.bind, name) or getattr(self.endpoints, name)

    def with_endpoints(self, **found: str) -> RunConfig:
        """A copy with the real (bound) endpoints of roles already started."""
        ep = self.endpoints.model_copy(update=found)
        return self.model_copy(update={"endpoints": ep})

    def publisher_config(self) -> PublisherConfig:
        return self.publisher.model_copy(
            update={
                "ingest_endpoint": self.bind_address("ingest"),
                "updates_endpoint": self.bind_address("updates"),
                "snapshot_endpoint": self.bind_address("snapshot"),
            }
        )

    def controller_instrument(self) -> dict[str, Any]:
        """The driver config the controller builds its microscope/camera from."""
        if self.controller.instrument_mode == "in_process":
            return self.instrument
        return {
            "backend": "remote",
            "remote": {"endpoint": self.endpoints.instrument, "timeout_s": self.controller.instrument_timeout_s},
            # The server applies its own limits; the client applies them too (fresh read-back either side).
            "limits": self.instrument.get("limits") or {},
        }

    def dump_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- errors a person can act on ------------------------------------------------------------------------------
def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The field names allowed at the parent of ``loc`` (for "unknown field" errors)."""
    m: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or m is None:
            continue
        f = getattr(m, "model_fields", {}).get(part)
        if f is None:
            return None
        ann = f.annotation
        options = getattr(ann, "__args__", (ann,))
        m = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if m is None and isinstance(ann, type) and issubclass(ann, BaseModel):
            m = ann
    return list(m.model_fields) if m is not None and hasattr(m, "model_fields") else None


def format_errors(exc: ValidationError, source: str, model: type[BaseModel], prefix: tuple = ()) -> str:
    lines = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, tuple(err["loc"]))
            msg = "unknown field"
            if allowed:
                import difflib

                close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
                msg += (f" (did you mean {close[0]!r}?)" if close else "") + f"; allowed: {', '.join(allowed)}"
        elif "input" in err and err["type"] not in ("missing",):
            shown = repr(err["input"])
            msg = f"{msg} (got {shown[:80]})"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def load_run_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate; ConfigError names the file and field. ``path=None``: the built-in defaults."""
    data: dict[str, Any] = {}
    source = "defaults" if path is None else str(path)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such config file" if not p.exists() else f"{p}: not a file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of sections ({', '.join(RunConfig.model_fields)})")
        data = loaded
    for key, value in (overrides or {}).items():
        data[key] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, RunConfig)) from None


def check_everything(cfg: RunConfig, source: str = "config", role: str | None = None) -> None:
    """The sections validated by other modules: the instrument (drivers) and the reconstruction (which
    imports torch). ``ltemlive run`` (role None: everything) and ``serve ROLE`` call it before starting."""
    if role in (None, "reconstructor"):
        reconstruction_config(cfg, source)
    _connectable(cfg, source, role)
    _secured(cfg, source, role)
    if role in ("reconstructor", "publisher"):
        return
    from drivers.factory import BACKENDS, check_config
    from drivers.limits import SafetyLimits

    inst = cfg.instrument
    backend = inst.get("backend", "simulated")
    if backend == "remote":
        allowed = ", ".join(b for b in BACKENDS if b != "remote")
        raise ConfigError(f"{source}: instrument.backend: {backend!r} is not served; allowed: {allowed}")
    try:  # the driver layer's own check: every backend and its section, the limits, the server section
        check_config(inst)
    except ValueError as exc:
        # its problems read "section.field: what"; here they are fields of the session's instrument section
        parts = [f"instrument.{p}" if re.match(r"^[a-z_]+(\.[A-Za-z0-9_]+)*: ", p) and not p.startswith("allowed")
                 else p for p in str(exc).split("; ")]
        raise ConfigError(f"{source}: " + "; ".join(parts)) from None
    if backend != "simulated" and cfg.optics is None and role in (None, "controller"):
        raise ConfigError(f"{source}: optics: required for a real instrument (voltage_v, cs_m, theta_c_rad)")
    lo, hi = min(cfg.plan.defocus_m), max(cfg.plan.defocus_m)
    limits = SafetyLimits.model_validate(inst.get("limits") or {})
    if lo < limits.defocus_min_m or hi > limits.defocus_max_m:
        raise ConfigError(
            f"{source}: plan.defocus_m: {lo:g}..{hi:g} m is outside the instrument's limits "
            f"{limits.defocus_min_m:g}..{limits.defocus_max_m:g} m (instrument.limits)"
        )


#: what each role connects to (it binds the rest); ltemlive run fills these in as it starts the roles
CONNECTS = {
    "controller": ("ingest",),
    "reconstructor": ("frames", "control", "ingest"),
}


def _connectable(cfg: RunConfig, source: str, role: str | None) -> None:
    """A role started on its own must be told the real address of what it connects to: port * is only for
    binding (``ltemlive run`` passes the bound ports to the roles it starts)."""
    names = list(CONNECTS.get(role or "", ()))
    if role == "controller" and cfg.controller.instrument_mode == "remote":
        names.insert(0, "instrument")
    for name in names:
        ep = getattr(cfg.endpoints, name)
        if ep.startswith("tcp://") and ep.endswith(":*"):
            raise ConfigError(
                f"{source}: endpoints.{name}: {ep} has no port, but the {role} connects there; give the address "
                f"the other role bound (e.g. tcp://127.0.0.1:7101; config/split-*.yaml), or use ltemlive run"
            )


def _secured(cfg: RunConfig, source: str, role: str | None) -> None:
    """Nothing binds beyond loopback without CURVE keys; with keys, this host has the role's own secret key."""
    from ltemlive.wire import security

    roles = [role] if role else ["controller", "publisher"] + (
        ["instrument"] if cfg.controller.instrument_mode == "remote" else [])
    if cfg.security.keys_dir is None:
        for r in roles:
            for name in BINDS.get(r, ()):
                ep = cfg.bind_address(name)
                if not security.loopback_only(ep):
                    raise ConfigError(
                        f"{source}: endpoints.{name}: binding {ep} beyond loopback needs CURVE keys: set "
                        "security.keys_dir (ltemlive keys create ...; docs/security.md), or bind tcp://127.0.0.1"
                    )
        return
    ring = security.Keyring(cfg.security.keys_dir)
    for r in roles if role else ["controller", "publisher", "reconstructor"] + (
            ["instrument"] if cfg.controller.instrument_mode == "remote" else []):
        try:
            ring.secret(cfg.key_name(r))
        except security.SecurityError as exc:
            raise ConfigError(f"{source}: security.keys_dir: {exc}") from None


def reconstruction_config(cfg: RunConfig, source: str = "config"):
    from ltemlive.reconstruct.config import ReconstructionConfig

    try:
        rc = ReconstructionConfig.model_validate(cfg.reconstruction)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, ReconstructionConfig, ("reconstruction",))) from None
    if rc.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{source}: reconstruction.device: {rc.device!r} but no CUDA device here; use cpu")
    elif rc.device != "cpu":
        raise ConfigError(f"{source}: reconstruction.device: {rc.device!r}; allowed: cpu, cuda, cuda:N")
    return rc
