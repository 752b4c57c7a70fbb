"""The web front door: dashboard pages, the REST API, Prometheus metrics and health.

FastAPI (on Starlette) in its own thread of the node's process (``server.WebServer``),
never on the DICOM listener's threads. Every route is a thin shell over the service layer
(``segnode.node.admin``): it authenticates, parses, calls, and renders JSON or a template.
The web holds no state of its own: sessions are signed cookies, everything else is read
from the database (and the node's probe) on each request.
"""
