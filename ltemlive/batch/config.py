"""The reconstruction settings of a batch: which config each series is reconstructed with.

Order: ``--config FILE`` when given (for every input); else, for a run file, the ``reconstruction`` section of the
session config it recorded (so a batch redoes what the live service was asked to do); else the defaults. Then
``--max-iter`` and ``--device`` on top. Everything is validated on the client, before a cluster starts, and an
error is one line naming the file and field (exit 2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def load_config_file(path: Path) -> dict[str, Any]:
    """A ReconstructionConfig YAML (as ``ltemlive reconstruct --config``), or a session YAML, whose
    ``reconstruction`` section is then used (ReconstructionConfig has no field of that name: no ambiguity)."""
    import yaml

    from ltemlive.session.config import ConfigError

    if not path.is_file():
        raise ConfigError(f"{path}: no such config file" if not path.exists() else f"{path}: not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of reconstruction settings")
    if isinstance(data.get("reconstruction"), dict):
        data = data["reconstruction"]
    resolve(data, {}, str(path))  # validate now: one clear line before anything starts
    return data


def resolve(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """The validated config (JSON-able dict) from base settings plus command-line overrides."""
    from ltemlive.reconstruct.config import ReconstructionConfig
    from ltemlive.session.config import ConfigError, format_errors

    try:
        cfg = ReconstructionConfig.model_validate({**base, **overrides})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source, ReconstructionConfig)) from None
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        raise ConfigError(f"{source}: device: {cfg.device!r}; allowed: cpu, cuda, cuda:N")
    return cfg.model_dump(mode="json")


def overrides_of(max_iter: int | None, device: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if max_iter is not None:
        if max_iter < 1:
            raise ValueError(f"--max-iter {max_iter}: must be at least 1")
        out["max_iter"] = max_iter
    if device is not None:
        if not DEVICE_PATTERN.fullmatch(device):
            raise ValueError(f"--device {device!r}: allowed values are cpu, cuda, cuda:N")
        out["device"] = device
    return out
