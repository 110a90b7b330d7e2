"""The kinds of server the scenarios run side by side: the service and the reference relay
(A-D), and for documents (E) the service over its JSON protocol, the service over the
y-websocket protocol (`/yjs/`) and the y-websocket server."""

from __future__ import annotations

SERVICE, REFERENCE = "service", "reference"
KINDS = (SERVICE, REFERENCE)
YWEBSOCKET = "y-websocket"
# The service on `/yjs/{project}/{document}`: the same program as SERVICE, spoken to in the
# y-websocket server's binary protocol, so that both get byte-identical frames.
SERVICE_YJS = "service-yjs"
DOCUMENT_KINDS = (SERVICE, SERVICE_YJS, YWEBSOCKET)
# The kinds that speak y-protocols' binary messages.
BINARY_KINDS = (SERVICE_YJS, YWEBSOCKET)
