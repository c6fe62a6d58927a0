"""Sealroom: a TLS-secured, authenticated message server."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
