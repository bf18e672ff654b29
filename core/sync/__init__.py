"""Replication between signers: the NATS JetStream bridge, NATS authorization, event signatures
and validation of a peer's events (docs/sync.md)."""
