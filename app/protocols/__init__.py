"""Wire protocols: how a connection's frames become messages, and events become frames."""
