"""The open_run component (see README.md)."""
