"""The select_champion component (see README.md)."""
