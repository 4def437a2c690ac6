"""``workers.portal.status.attention``: when due webhooks need a person."""

from __future__ import annotations

from workers.portal.status import attention


def _portal(due: int, oldest_due_s: float) -> dict:
    return {"notices": [], "deliveries": {"due": due, "waiting_retry": 0, "failed": 0,
                                          "oldest_due_s": oldest_due_s}}


def test_a_webhook_due_for_less_than_the_rounding_counts_when_no_wait_is_allowed():
    # ``--max-outbox-lag 0``: the age rounds to 0.0 s within 50 ms of becoming due.
    [line] = attention(_portal(1, 0.0), 0)
    assert line.startswith("portal: 1 webhook(s) due, the oldest for 0s >= 0s")


def test_webhooks_due_for_less_than_the_allowed_wait_need_nobody():
    assert attention(_portal(3, 59.9), 60) == []
    assert attention(_portal(0, 0.0), 0) == []
    assert len(attention(_portal(3, 60.0), 60)) == 1
