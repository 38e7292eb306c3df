"""The sparse_train component (see README.md)."""
