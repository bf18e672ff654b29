"""The repository: the SQLite store and its schema, the audit chain, applying a peer's events,
backup and the import of an old `openssl ca` history."""
