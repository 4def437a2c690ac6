"""The one sentence ``coexist status`` and ``cutover status`` say about repairs waiting
for the SoR (``workers.router.waits``)."""

from __future__ import annotations

from typing import Any


def waiting_attention(domain: str, w: dict[str, Any] | None) -> str | None:
    """``customer: 2 repair(s) waiting for the SoR ... (oldest 125 s)``; None: none."""
    if not w or not w.get("count"):
        return None
    oldest = "" if w.get("oldest_s") is None else f" (oldest {w['oldest_s']:g} s)"
    return (f"{domain}: {w['count']} repair(s) waiting for the SoR to hold the record's last "
            f"routed version{oldest}; retried with backoff, recorded as a technical "
            f"exception after the retry policy (about 36-72 min)")
