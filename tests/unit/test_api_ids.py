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


def test_the_bytes_form_is_the_same_shape_and_every_random_digit_varies():
    from workers.api.ids import POOL_SIZE, new_correlation_id_bytes

    made = [new_correlation_id_bytes() for _ in range(3 * POOL_SIZE)]  # over refills
    for raw in made:
        parsed = uuid.UUID(raw.decode())
        assert str(parsed).encode() == raw
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(made)) == len(made)
    for at in range(36):
        seen = {raw[at] for raw in made}
        if at in (8, 13, 18, 23):
            assert seen == {ord("-")}
        elif at == 14:
            assert seen == {ord("4")}
        elif at == 19:
            assert seen == set(b"89ab")
        else:
            assert len(seen) == 16, f"digit {at} takes every hex value"


def test_threads_taking_ids_at_once_never_share_one():
    from concurrent.futures import ThreadPoolExecutor

    from workers.api.ids import new_correlation_id_bytes

    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_correlation_id_bytes() for _ in range(5000)],
                                range(8)))
    ids = [i for b in batches for i in b]
    assert len(set(ids)) == len(ids) == 40_000


def test_a_forked_child_never_reuses_its_parents_pool():
    import os

    from workers.api.ids import new_correlation_id_bytes

    new_correlation_id_bytes()  # the parent's pool holds ids now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, b"".join(new_correlation_id_bytes() for _ in range(100)))
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as f:
        raw = f.read()
    child = {raw[i:i + 36] for i in range(0, len(raw), 36)}
    parent = {new_correlation_id_bytes() for _ in range(2000)}
    assert len(child) == 100 and not child & parent
