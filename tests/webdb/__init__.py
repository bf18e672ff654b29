"""The WebDB daemon against a real MariaDB with CAcert's schema."""
