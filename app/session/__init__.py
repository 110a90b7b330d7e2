"""Session: the life of one accepted WebSocket, from join to leave."""
