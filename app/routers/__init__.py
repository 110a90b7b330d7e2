"""HTTP and WebSocket routes: thin, each takes its services from the app's container."""
