"""How the cloud adapter classifies answers, on a fake transport (no network)."""

from __future__ import annotations

import logging

import httpx
import pytest

from bus.errors import BusinessError, TechnicalError, is_business
from coexistence.errors import TranslationError
from tests.contracts.erp_contract import new_key, sample
from workers.cloud_erp import CloudBusinessError, CloudErp, CloudTechnicalError
from workers.config import Settings
from workers.ratelimit import LocalTokenBucket


class FakeCloud:
    """Answers requests from a script of (status, json body, headers); records requests."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body, *headers = answer
        return httpx.Response(status, json=body, headers=headers[0] if headers else {})


def adapter(fake: FakeCloud, waits: list[float] | None = None, **kwargs) -> CloudErp:
    return CloudErp("http://cloud.test", transport=httpx.MockTransport(fake),
                    sleep=(waits if waits is not None else []).append,
                    base_backoff_s=0.01, max_backoff_s=1.0, **kwargs)


def odata_error(code: str, message: str, *targets: str) -> dict:
    return {"error": {"code": code, "message": message,
                      "details": [{"target": t, "message": message} for t in targets]}}


@pytest.mark.parametrize("status", [400, 404, 409, 412, 422])
def test_business_answers_raise_a_business_error_carrying_the_server_message(status):
    fake = FakeCloud((status, odata_error("Nope", "creditLimit: not a decimal", "creditLimit")))
    with pytest.raises(CloudBusinessError) as caught:
        adapter(fake).read(0, 10)
    error = caught.value
    assert isinstance(error, BusinessError) and is_business(error)
    assert error.status == status and error.targets == ("creditLimit",)
    assert "creditLimit: not a decimal" in str(error)
    assert len(fake.requests) == 1, "a business error is never retried"


@pytest.mark.parametrize("failure", [
    (503, {}), (500, {}), (429, {}),
    httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
    httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
])
def test_technical_failures_are_retried_then_succeed(failure):
    ok = (200, {"value": [], "lastCursor": 0})
    fake = FakeCloud(failure, failure, ok)
    waits: list[float] = []
    assert adapter(fake, waits).read(0, 10) == []
    assert len(fake.requests) == 3
    assert len(waits) == 2 and all(0 <= w <= 1.0 for w in waits)


def test_technical_failures_that_persist_end_as_a_technical_error():
    fake = FakeCloud(*[(503, {})] * 3)
    with pytest.raises(CloudTechnicalError, match="failed 3 times; last: HTTP 503") as caught:
        adapter(fake, attempts=3).read(0, 10)
    assert isinstance(caught.value, TechnicalError) and not is_business(caught.value)


def test_backoff_grows_and_is_capped():
    fake = FakeCloud(*[(503, {})] * 8)
    waits: list[float] = []
    erp = CloudErp("http://cloud.test", transport=httpx.MockTransport(fake), sleep=waits.append,
                   attempts=8, base_backoff_s=0.1, max_backoff_s=0.4)
    with pytest.raises(CloudTechnicalError):
        erp.read(0, 10)
    assert len(waits) == 7 and max(waits) <= 0.4
    assert all(w <= 0.1 * 2 ** i for i, w in enumerate(waits)), "full jitter below each step"


def test_retry_after_in_http_date_form_is_honoured():
    fake = FakeCloud((429, {}, {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
                     (200, {"value": [], "lastCursor": 0}))
    waits: list[float] = []
    adapter(fake, waits).read(0, 10)
    assert waits == [1.0], "a far-away date is capped at the maximum backoff"


def test_a_stale_write_is_answered_from_the_read_without_writing():
    current = {"@odata.etag": 'W/"3"', "id": "9b2c", "coexistSourceVersion": 8}
    fake = FakeCloud((200, current))
    result = adapter(fake).upsert(sample("customer", 1), source_version=8,
                                  idempotency_key=new_key())
    assert (result.incoming, result.current) == (8, 8)
    assert [r.method for r in fake.requests] == ["GET"]


def test_writes_carry_if_match_and_an_idempotency_key_derived_from_the_message_id():
    current = {"@odata.etag": 'W/"3"', "id": "9b2c", "coexistSourceVersion": 2}
    fake = FakeCloud((200, current), (204, None))
    adapter(fake).upsert(sample("customer", 1), source_version=5, idempotency_key="msg-42")
    patch = fake.requests[1]
    assert patch.method == "PATCH" and patch.url.path == "/customers(9b2c)"
    assert patch.headers["If-Match"] == 'W/"3"'
    assert patch.headers["Idempotency-Key"] == 'msg-42:W/"3"'
    assert b'"coexistSourceVersion":5' in patch.content


def test_a_lost_race_is_decided_again_on_fresh_state():
    fake = FakeCloud(
        (404, odata_error("NotFound", "no customers")),
        (409, odata_error("EntityAlreadyExists", "exists")),
        (200, {"@odata.etag": 'W/"1"', "id": "77", "coexistSourceVersion": 9}),
    )
    result = adapter(fake).upsert(sample("customer", 1), source_version=5,
                                  idempotency_key=new_key())
    assert (result.incoming, result.current) == (5, 9), "the other writer was newer"


def test_the_bearer_token_is_sent_but_never_logged(caplog):
    fake = FakeCloud((200, {"value": [], "lastCursor": 0}))
    caplog.set_level(logging.DEBUG)
    adapter(fake, token="s3cret-token").read(0, 10)
    assert fake.requests[0].headers["Authorization"] == "Bearer s3cret-token"
    assert "s3cret-token" not in caplog.text


def test_a_change_of_a_resource_coexist_does_not_sync_is_refused_not_skipped():
    entry = {"cursor": 7, "entitySet": "vendors", "id": "1", "number": "V1", "op": "upsert",
             "clientId": "X", "at": "2026-01-01T00:00:00Z", "version": 1}
    fake = FakeCloud((200, {"value": [entry], "lastCursor": 7}))
    with pytest.raises(TranslationError, match="entitySet='vendors'"):
        adapter(fake).read(0, 10)


def test_from_settings_needs_a_url_and_takes_the_rate_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COEXIST_HOME", str(tmp_path))
    monkeypatch.delenv("COEXIST_CLOUD_URL", raising=False)
    monkeypatch.delenv("COEXIST_REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="COEXIST_CLOUD_URL"):
        CloudErp.from_settings(Settings.from_env())
    monkeypatch.setenv("COEXIST_CLOUD_URL", "http://cloud.test")
    monkeypatch.setenv("COEXIST_CLOUD_RATE_PER_S", "25")
    with CloudErp.from_settings(Settings.from_env()) as erp:
        assert isinstance(erp.limiter, LocalTokenBucket) and erp.limiter.rate_per_s == 25
