"""The signer's actors, grouped by role: spine/ (serial link to dispatcher), handlers/ (one per
command family), owners/ (the Hsm and the Repository), and the Supervisor and Sync at this
level. Actors hold no domain logic: that lives in core/ (docs/actors.md)."""
