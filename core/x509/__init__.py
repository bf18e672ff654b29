"""X.509 issuance logic: profiles, issuer certificates, CSR and SPKAC requests,
building and linting a certificate whose signature the Hsm actor makes."""
