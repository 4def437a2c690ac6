"""The legacy ERP's model: its SQL schema as SQLModel table classes (no I/O here)."""

from coexistence.legacy.models import AUDIT_COLUMNS, LEGACY_METADATA, LEGACY_TABLES, LegacyTable

__all__ = ["AUDIT_COLUMNS", "LEGACY_METADATA", "LEGACY_TABLES", "LegacyTable"]
