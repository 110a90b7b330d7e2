"""Rooms: a project's connections on this instance, and the events they exchange."""
