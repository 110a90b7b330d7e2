"""Upgrade: the HTTP server, its request limits, and the entry that routes WebSocket upgrades."""
