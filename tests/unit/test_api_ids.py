"""``workers.api.ids.new_correlation_id``: shaped like ``str(uuid.uuid4())``, and unique."""

from __future__ import annotations

import uuid

from workers.api.ids import new_correlation_id


def test_a_correlation_id_is_a_version_4_uuid_in_its_usual_text_form():
    for _ in range(1000):
        text = new_correlation_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_correlation_ids_do_not_repeat():
    ids = {new_correlation_id() for _ in range(50_000)}
    assert len(ids) == 50_000
