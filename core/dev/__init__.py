"""Development only: the SoftHSM token set-up and the development CA made by `signer dev-init`."""
