"""CRLs: building a CRL for the Hsm actor to sign, and binary diffs between two CRLs of one
issuer (docs/CRLS.md)."""
