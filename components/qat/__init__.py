"""The qat component (see README.md)."""
