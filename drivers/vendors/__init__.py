"""Vendor adapters. Each imports its vendor package lazily (optional extras), so ``drivers`` imports cleanly
on machines without them; constructing an adapter without its package raises NotAvailable naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from drivers.errors import NotAvailable

__all__ = ["import_vendor"]


def import_vendor(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotAvailable(
            f"vendor package {module!r} is not installed ({exc}); install the optional extra: "
            f"pip install 'ltemlive[{extra}]'"
        ) from None
