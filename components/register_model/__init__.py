"""The register_model component (see README.md)."""
