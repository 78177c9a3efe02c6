"""fusedrnn's benchmark suite: ``python -m bench``."""
