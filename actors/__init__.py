"""The signer's actors, one module each (see docs/actors.md for the map)."""
