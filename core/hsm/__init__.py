"""The HSM over PKCS#11: the session the Hsm actor holds, key attributes and mechanisms, and
the key ceremony."""
