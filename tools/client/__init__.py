"""The client side of the link: the protocol library WebDB uses, CRL fetching, atomic file
writes and the `signer-client` command."""
