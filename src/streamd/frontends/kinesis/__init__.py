"""Kinesis-compatible HTTP gateway (AWS JSON 1.1 and CBOR) onto the engine; see docs/kinesis.md."""
