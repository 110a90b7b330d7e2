"""Admission: every check an upgrade passes before the handshake (origin, token, caps)."""
