"""OpenPGP: packets and armor, validating a user's key with gpg, and the CA's v4 certifications
(docs/OPENPGP.md)."""
