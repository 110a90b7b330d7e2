"""texflow-websocket: the real-time collaboration gateway of TexFlow."""
