"""What the running signer needs around its actors: configuration, the authenticated actor
transport, loopback sockets, the pty relay, process hardening, the instance lock, the owner
reaper and the CLI contract."""
