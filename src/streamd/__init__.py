"""streamd: a durable, sharded, Kinesis-style log service (server side, on trio)."""

__version__ = "0.1.0"
