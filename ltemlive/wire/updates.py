"""Messages of the update stream, protocol ``LTEMUPD`` v1.

Sources (controller, reconstructor service) PUSH events to the publisher's PULL ingest socket without ever
blocking (a full queue drops the event, counted); the publisher re-publishes them on a PUB socket with one
sequence number across all topics, a 1 s heartbeat carrying the last seq, and serves the latest state of
every topic on a snapshot ROUTER for late joiners (zguide "Clone").

    source -> publisher      EVENT {topic, source, payload} + arrays (previews)
    publisher -> subscriber  [topic, LTEMUPD, EVENT (seq set by the publisher), *arrays]
    client -> snapshot       SNAPSHOT_REQ {topics}
    snapshot -> client       EVENT ... (latest of each topic and source), then SNAPSHOT_END {seq}
    client -> snapshot       INFO_REQ
    snapshot -> client       INFO {updates_port, heartbeat_s, instance, last_seq}
    client -> snapshot       RESULT_REQ {series}   (series None: the latest)
    snapshot -> client       EVENT topic "result" with the full-resolution arrays, then SNAPSHOT_END {seq};
                             SNAPSHOT_END alone when the publisher no longer holds that series
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from ltemlive.wire import Channel, Envelope

PROTOCOL_ID = b"LTEMUPD"
VERSION = 1

#: status: run state; progress: series/frame counters; frame: a frame reached disk; recon: reconstruction
#: progress (loss, preview); result: a finished reconstruction; calibration: a feedback decision;
#: log: notable events (warnings, aborts); worker: a reconstructor worker's own state, every few seconds (its
#: liveness); hb: the publisher's heartbeat
TOPICS = ("status", "progress", "frame", "recon", "result", "calibration", "log", "worker", "hb")

Topic = Literal[TOPICS]  # type: ignore[valid-type]


class Event(Envelope):
    type: Literal["event"] = "event"
    topic: Topic
    source: Annotated[str, Field(max_length=64)] = ""
    payload: dict[str, Any] = Field(default_factory=dict)


class SnapshotReq(Envelope):
    type: Literal["snapshot_req"] = "snapshot_req"
    topics: list[Topic] = Field(default_factory=lambda: list(TOPICS))


class SnapshotEnd(Envelope):
    type: Literal["snapshot_end"] = "snapshot_end"
    last_seq: int = 0


class InfoReq(Envelope):
    """What a client that knows only the snapshot address asks first: where is the update stream?"""

    type: Literal["info_req"] = "info_req"


class Info(Envelope):
    type: Literal["info"] = "info"
    #: the update stream's port on the host the client reached the snapshot socket at (tcp), or its ipc address
    updates_port: int | None = None
    updates_endpoint: str = ""
    heartbeat_s: float = 1.0
    instance: str = ""
    last_seq: int = 0


class ResultReq(Envelope):
    """Ask for a finished reconstruction at full resolution (the stream carries previews)."""

    type: Literal["result_req"] = "result_req"
    #: ``series`` (the Envelope field) names the series; None asks for the latest


INGEST = Channel(PROTOCOL_ID, VERSION, [Event])
UPDATES = Channel(PROTOCOL_ID, VERSION, [Event, SnapshotEnd, Info])
SNAPSHOT_REQUESTS = Channel(PROTOCOL_ID, VERSION, [SnapshotReq, InfoReq, ResultReq])
