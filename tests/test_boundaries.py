"""Import boundaries of docs/layout.md, checked statically with `ast` (nothing is imported):

- ltemlive.optics, ltemlive.tie and ltemlive.reconstruct never import `drivers` or `simulator`;
- ltemlive.optics imports nothing of ltemlive but ltemlive.constants and itself;
- `drivers` never imports ltemlive.optics, ltemlive.tie or ltemlive.reconstruct;
- `simulator` never imports `ltemlive` (it is the independent reference implementation);
- `drivers` imports nothing of `ltemlive` but the shared wire module `ltemlive.wire`;
- the reconstructor service (`ltemlive.recon_service`) may import the reconstructor and the wire, never `drivers`
  or `simulator`;
- the acquisition controller (`ltemlive.controller`) may import drivers and the wire, never torch or the
  reconstructor; the frame stream (`ltemlive.stream`) and the publisher never import torch, drivers or the
  reconstructor; the wire imports nothing of the project but itself;
- the watchers (`ltemlive.monitor`, `ltemlive.publisher.view`) never import torch, drivers, the simulator or the
  reconstructor (they run on a collaborator's laptop);
- the web dashboard (`ltemlive.dashboard`) never imports torch, drivers, simulator, the reconstructor or the
  acquisition controller (its control client only); the acquisition controller, the reconstructor service and
  the frame stream never import matplotlib or the pictures (images are rendered by watchers, never there);
- one framing: nothing outside ltemlive/wire and drivers/protocol.py (the instrument channel's message table)
  defines a PROTOCOL_ID, and drivers/protocol.py parses no header and views no buffer itself;
- no module anywhere imports pickle or its relatives, or uses pyzmq's pickling send/recv (never pickle on
  the wire: docs/adr/0003-instrument-wire-format.md).

Imports inside functions, `if TYPE_CHECKING:` blocks, relative imports, `from pkg import submodule` and
`importlib.import_module("literal")` all count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ltemlive", "simulator", "drivers")
SKIP_DIRS = {".venv", ".git", "__pycache__", ".hypothesis", ".pytest_cache", ".ruff_cache", "build", "dist"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "shelve", "marshal", "copyreg"}
PICKLE_CALLS = {"send_pyobj", "recv_pyobj"}


def python_files(*tops: str) -> list[Path]:
    out = []
    for top in tops:
        base = ROOT / top
        paths = [base] if base.is_file() else sorted(base.rglob("*.py"))
        out += [p for p in paths if not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]
    return out


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module the file imports (`from a import b` yields both a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)] if node.level > 1 else base_parts
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
    return {m for m in found if m}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in files:
        for mod in sorted(imported_modules(path)):
            if any(within(mod, f) for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    return bad


# ----------------------------------------------------------------------------------------------------------
# the checker itself


def test_checker_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    f = pkg / "mod.py"
    f.write_text(
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "from ltemlive import tie\n"
        "if TYPE_CHECKING:\n"
        "    from simulator.series import SimulationConfig\n"
        "def f():\n"
        "    import drivers.protocol\n"
        "    import importlib\n"
        "    return importlib.import_module('pickle')\n"
    )
    mods = imported_modules(f, root=tmp_path)
    for expected in (
        "os.path",
        "pkg.sub.sibling",
        "pkg.other",
        "pkg.other.thing",
        "ltemlive",
        "ltemlive.tie",
        "simulator.series",
        "drivers.protocol",
        "pickle",
    ):
        assert expected in mods, expected


def test_the_tree_is_where_we_look():
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").exists()
    assert (ROOT / "ltemlive" / "optics" / "forward.py").exists()
    assert (ROOT / "ltemlive" / "tie.py").exists()
    assert len(python_files(*PACKAGES)) > 20


# ----------------------------------------------------------------------------------------------------------
# the rules of docs/layout.md


CORE = ("ltemlive/optics", "ltemlive/tie.py", "ltemlive/reconstruct")


@pytest.mark.parametrize("top", CORE)
def test_core_never_imports_drivers_or_simulator(top):
    assert violations(python_files(top), ("drivers", "simulator")) == []


def test_optics_depends_only_on_constants():
    bad = []
    for path in python_files("ltemlive/optics"):
        for mod in imported_modules(path):
            if within(mod, "ltemlive") and not (
                within(mod, "ltemlive.constants") or within(mod, "ltemlive.optics") or mod == "ltemlive"
            ):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert bad == []


def test_drivers_never_import_the_reconstruction_core():
    assert violations(python_files("drivers"), ("ltemlive.optics", "ltemlive.tie", "ltemlive.reconstruct")) == []


def test_simulator_never_imports_ltemlive():
    assert violations(python_files("simulator"), ("ltemlive",)) == []


def test_no_pickle_anywhere():
    tops = [p.name for p in ROOT.iterdir() if p.name not in SKIP_DIRS and (p.is_dir() or p.suffix == ".py")]
    files = python_files(*tops)
    assert any(p.parts[-2:] == ("tests", "test_boundaries.py") for p in files)
    bad = []
    for path in files:
        mods = imported_modules(path)
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(mods) if m.split(".")[0] in PICKLE_MODULES]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in PICKLE_CALLS:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.attr} (pickles)")
            if (
                isinstance(node, ast.keyword)
                and node.arg == "allow_pickle"
                and not (isinstance(node.value, ast.Constant) and node.value.value is False)
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} passes allow_pickle")
    assert bad == []


# ----------------------------------------------------------------------------------------------------------
# the live service's process roles (issue 8)

TORCH = ("torch",)
RECONSTRUCTOR = ("ltemlive.optics", "ltemlive.tie", "ltemlive.reconstruct")


def _ltemlive_imports(files: list[Path]) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in files
        for m in sorted(imported_modules(p))
        if within(m, "ltemlive") and m != "ltemlive" and not within(m, "ltemlive.wire")
    ]


def test_drivers_import_only_the_wire_of_ltemlive():
    assert _ltemlive_imports(python_files("drivers")) == []


def test_reconstructor_service_never_imports_drivers():
    assert violations(python_files("ltemlive/recon_service"), ("drivers", "simulator")) == []


def test_controller_never_imports_torch_or_the_reconstructor():
    assert violations(python_files("ltemlive/controller"), TORCH + RECONSTRUCTOR + ("ltemlive.recon_service",)) == []


@pytest.mark.parametrize("top", ["ltemlive/stream", "ltemlive/publisher", "ltemlive/wire"])
def test_stream_publisher_and_wire_stay_light(top):
    forbidden = TORCH + RECONSTRUCTOR + ("drivers", "simulator", "ltemlive.controller", "ltemlive.recon_service")
    assert violations(python_files(top), forbidden) == []


@pytest.mark.parametrize("top", ["ltemlive/monitor", "ltemlive/publisher/view.py"])
def test_watchers_stay_light(top):
    # A collaborator's laptop runs `ltemlive monitor` with pyzmq and rich: no torch, no drivers, no reconstructor.
    forbidden = TORCH + RECONSTRUCTOR + ("drivers", "simulator", "ltemlive.recon_service")
    assert python_files(top)
    assert violations(python_files(top), forbidden) == []


def test_the_wire_depends_on_nothing_of_the_project():
    bad = [m for m in _ltemlive_imports(python_files("ltemlive/wire"))]
    assert bad == []


def test_dashboard_stays_a_watcher():
    files = python_files("ltemlive/dashboard")
    assert len(files) >= 2
    forbidden = TORCH + RECONSTRUCTOR + ("drivers", "simulator", "ltemlive.recon_service")
    bad = violations(files, forbidden)
    # Of the controller only the client of its control socket: pause/resume/abort go through the socket.
    client = "ltemlive.controller.client"
    bad += [f"{p.relative_to(ROOT)} imports {m}" for p in files for m in sorted(imported_modules(p))
            if within(m, "ltemlive.controller") and m != "ltemlive.controller" and not within(m, client)]
    assert bad == []


@pytest.mark.parametrize("top", ["ltemlive/controller", "ltemlive/recon_service", "ltemlive/stream"])
def test_no_pictures_in_the_acquisition_or_reconstructor_processes(top):
    forbidden = ("matplotlib", "ltemlive.pictures", "ltemlive.summary", "ltemlive.dashboard")
    assert violations(python_files(top), forbidden) == []


def test_session_config_never_imports_torch_at_module_level():
    # The controller's host checks its config without torch: only function-level imports may reach it.
    tree = ast.parse((ROOT / "ltemlive/session/config.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
    assert not any(within(m, f) for m in names for f in TORCH + RECONSTRUCTOR + ("ltemlive.recon_service.service",))


def test_one_framing_for_every_channel():
    """Only the wire module (and the instrument channel's message table built on it) names a protocol id, and
    no module outside the wire parses or encodes a header itself."""
    owners = []
    for path in python_files("ltemlive", "drivers"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PROTOCOL_ID" for t in node.targets):
                owners.append(str(path.relative_to(ROOT)))
    assert all(o.startswith("ltemlive/wire/") or o == "drivers/protocol.py" for o in owners), owners
    text = (ROOT / "drivers/protocol.py").read_text(encoding="utf-8")
    assert "json.loads" not in text and "np.frombuffer" not in text  # framing comes from ltemlive.wire


def test_batch_reprocessing_never_imports_the_live_roles():
    # Dask workers reprocess run files: the reconstructor and the run-file reader, not the live session's
    # roles, stream or control socket (their optics come from ltemlive.session.optics, which stays small).
    forbidden = ("drivers", "ltemlive.session.replay", "ltemlive.session.roles", "ltemlive.session.launch",
                 "ltemlive.stream", "ltemlive.controller.control", "ltemlive.controller.controller")
    assert python_files("ltemlive/batch")
    assert violations([*python_files("ltemlive/batch"), ROOT / "ltemlive/session/optics.py"], forbidden) == []
