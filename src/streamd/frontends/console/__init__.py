"""The operator console: server-rendered pages over the node's engine, with live updates.

``streamd serve --console-listen HOST:PORT`` (docs/console.md). ``open_console`` binds the
listener and builds the ``Console`` (app.py) over the node's engine and bound operations;
node.py runs ``Console.run`` (sampler, group watches, admin actions) and serves connections
with ``ConsoleServer.handle``. Modules: http.py (HTTP/1.1 on the gateway's parser), app.py
(routes and pages' data), pages.py and html.py (rendering), live.py (Server-Sent Events),
admin.py and actions.py (confirmed admin operations), csrf.py, records.py and kpl.py (the
record browser), sampler.py and groupwatch.py (rates and lag over time), shapes.py (hash-key
bar and lineage), static/ (console.js, console.css, vendored htmx and uPlot with licences).
"""
