"""The CRM channel's domain: its port, the canonical <-> CRM mapping, onboarding rules."""
