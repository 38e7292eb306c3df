"""The benchmark component (see README.md)."""
