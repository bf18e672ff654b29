"""The whole signer as its own process over a pty, driven as a client would."""
