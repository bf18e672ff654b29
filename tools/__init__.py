"""Command-line tools: signer-client (what WebDB uses), signer-admin, and the pty relay."""
