"""Translators between the legacy, canonical and cloud models (pure functions)."""
