"""The WebDB side: the signer client daemon (`signer-client run`) and its parts."""
