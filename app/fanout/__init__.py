"""Fan-out: delivering an event to each connection without ever blocking on one."""
