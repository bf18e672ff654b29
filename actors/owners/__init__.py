"""The single owners: one Hsm actor per token and the one Repository writer. Only these touch
key material and the database."""
