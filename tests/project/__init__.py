"""Checks of the project as a whole: docs against code, import rules, packaging, systemd units."""
