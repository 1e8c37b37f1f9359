"""The native protocol front end: ``server.py`` (connections, framing, backpressure),
``api.py`` (one handler per operation) and ``api_groups.py`` (consumer-group operations)."""
