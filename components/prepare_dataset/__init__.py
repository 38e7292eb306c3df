"""The prepare_dataset component (see README.md)."""
