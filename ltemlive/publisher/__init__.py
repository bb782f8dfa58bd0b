"""Results publisher: one update stream with topics, a sequence number and a heartbeat, plus a snapshot socket for late joiners (one process role)."""
