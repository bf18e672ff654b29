"""Developer tools that are not part of any installed program: the long fuzz run."""
