"""JEOL's offline simulator package mirrors the online API; the fake re-exports the same modules."""
