"""`signer-admin`: operator commands beside the signer (status, audit, quarantine, backup,
import)."""
