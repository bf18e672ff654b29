"""Helpers the tests share: starting a signer, SoftHSM, MariaDB and nats-server; actor harness;
fixtures."""
