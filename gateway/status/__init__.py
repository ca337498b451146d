"""The local status listener: a page for the engineer on site, /metrics for Prometheus, /healthz for a watchdog.

It reads one thing, a `Snapshot` (snapshot.py) that the composition root gives it through a
`SnapshotSource`; it never reaches into the pipeline, the buffer or the links, and it never writes
anything. aiohttp is imported by server.py alone, and only when the listener is enabled
(listener.py imports it when it starts). `municipal-gateway watch` reads the same snapshot as JSON.
"""
