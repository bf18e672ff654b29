"""The command handlers, one actor per command family (Health, CaInfo, X509Signer pool,
Revoker, CrlIssuer, OpenPgpSigner), and what they share."""
