"""Crashes, dying processes, broken links and HSM faults, and the fuzz runs."""
