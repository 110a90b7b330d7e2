"""Socket: the WebSocket protocol under every connection, extended with sends that never wait."""
