"""Integrations of the recipe lifecycle with training frameworks (Ultralytics today)."""
