"""The ingest relays: PoP to dc-proxy to encoder, message for message."""
