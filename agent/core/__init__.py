"""The core both front doors stand on (agent/cli: the `kger` command line; agent/serve: HTTP and MCP).

What a door needs beyond the graph lives here, owned by neither door: the limits of a request and the typed
turn (limits.py, turn.py), the one filter model (filters.py), the typed trace events (events.py), opening a
session (session.py), query files (queries.py), evaluation and fusion tuning (evaluate.py), the HTML report
(report.py), the audit views of stored runs (audit.py), safe terminal text (render.py) and the version.
Arrows point one way: agent/cli -> agent/core <- agent/serve; the core imports neither door.
"""
