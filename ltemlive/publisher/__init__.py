"""Results publisher: one update stream with topics, a sequence number and a heartbeat, plus a snapshot socket for late joiners (one process role)."""  # noqa: E501

from ltemlive.publisher.publisher import Publisher, PublisherConfig, serve
from ltemlive.publisher.sink import EventSink
from ltemlive.publisher.subscriber import Subscriber

__all__ = ["EventSink", "Publisher", "PublisherConfig", "Subscriber", "serve"]
