"""Terminal monitor of a running session (``ltemlive monitor``)."""
