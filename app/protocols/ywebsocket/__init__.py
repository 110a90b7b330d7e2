"""The stock y-websocket protocol (y-protocols sync, awareness, auth) of `/yjs/`."""
