"""The only layer that owns server sockets: listeners, TLS, the reactor."""
