"""Plain modules tested alone (no actor system, no signer process)."""
