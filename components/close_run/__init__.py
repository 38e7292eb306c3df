"""The close_run component (see README.md)."""
