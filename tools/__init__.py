"""Programs beside the signer, never imported by it: client/ (the protocol library, CRL fetch,
`signer-client`), admin/ (`signer-admin`), webdb/ (the WebDB daemon) and dev/ (the fuzzer)."""
