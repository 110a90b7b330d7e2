"""The kinds of server the scenarios run side by side: the service and the reference relay
(A-D), and the service and the y-websocket server for documents (E)."""

from __future__ import annotations

SERVICE, REFERENCE = "service", "reference"
KINDS = (SERVICE, REFERENCE)
YWEBSOCKET = "y-websocket"
# The service on `/yjs/{project}/{document}`: the same process as SERVICE, spoken to in the
# y-websocket server's binary protocol, so that both get byte-identical frames.
SERVICE_YJS = "service-yjs"
DOCUMENT_KINDS = (SERVICE, YWEBSOCKET)
