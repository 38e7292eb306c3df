"""The export_model component (see README.md)."""
