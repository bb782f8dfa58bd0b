"""Fake PyJEM package (JEOL): ``PyJEM.TEM3`` and ``PyJEM.detector`` with an in-memory column."""
