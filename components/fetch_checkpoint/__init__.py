"""The fetch_checkpoint component (see README.md)."""
