"""Checks a microscopist runs on a real column before the live service may act on it (docs/first-session.md)."""
