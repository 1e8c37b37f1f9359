"""streamd client library (anyio: works from asyncio and trio programs)."""
