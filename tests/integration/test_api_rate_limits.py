"""Per-consumer rate limits across two ``coexist api serve`` processes sharing one Redis
bucket per consumer, their metrics, and the inquiry trace they leave for ``coexist trace``."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.support.processes import (
    Process,
    coexist_env,
    coexist_executable,
    free_port,
    wait_until,
)
from workers.api.auth import token_hash

pytestmark = pytest.mark.integration

BURSTY, QUIET = "tok-bursty-redis", "tok-quiet-redis"
CUSTOMER = "10001"


@pytest.fixture
def two_apis(tmp_path, redis_prefix):
    url, prefix = redis_prefix
    (tmp_path / "consumers.json").write_text(json.dumps({"consumers": [
        # 0.01/s: no token comes back while the test runs; 5 saved up.
        {"name": "bursty", "role": "inquiry", "token_sha256": token_hash(BURSTY),
         "rate_per_s": 0.01, "burst": 5},
        {"name": "quiet", "role": "inquiry", "token_sha256": token_hash(QUIET),
         "rate_per_s": 0.01, "burst": 5}]}))
    env = coexist_env(tmp_path, redis_url=url, redis_prefix=prefix,
                      api_consumers=str(tmp_path / "consumers.json"))
    for args in (["legacy", "seed", "--customers", "5"], ["db", "upgrade"]):
        subprocess.run(coexist_executable() + args, env=env, check=True, capture_output=True,
                       timeout=120)
    ports = [free_port() for _ in range(3)]
    procs = [Process(["api", "serve", "--port", str(ports[0]), "--log-level", "warning",
                      "--metrics-port", str(ports[2])], env, tmp_path / "api-a.log"),
             Process(["api", "serve", "--port", str(ports[1]), "--log-level", "warning"],
                     env, tmp_path / "api-b.log")]
    bases = [f"http://127.0.0.1:{p}" for p in ports[:2]]

    def up():
        try:
            return all(httpx.get(f"{b}/v1/openapi.json", timeout=2).status_code == 200
                       for b in bases)
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 30, "both API processes answer")
        yield bases, f"http://127.0.0.1:{ports[2]}/metrics", env, url, prefix
    finally:
        for p in procs:
            p.stop()


def _credit(base: str, token: str) -> httpx.Response:
    return httpx.get(f"{base}/v1/customers/{CUSTOMER}/credit", timeout=10,
                     headers={"Authorization": f"Bearer {token}"})


def test_one_bucket_per_consumer_is_shared_by_every_api_process(two_apis):
    import redis

    (a, b), metrics, env, url, prefix = two_apis
    # Five requests over both processes spend bursty's five tokens: a per-process bucket
    # would have five more in each.
    first = [_credit(base, BURSTY) for base in (a, b, a, b, a)]
    assert [r.status_code for r in first] == [200] * 5
    refused = [_credit(base, BURSTY) for base in (b, a)]
    assert [r.status_code for r in refused] == [429, 429]
    assert all(r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
               for r in refused)
    # The other consumer's budget is its own, on both processes.
    assert [_credit(base, QUIET).status_code for base in (b, a, b, a, b)] == [200] * 5
    client = redis.Redis.from_url(url)
    try:
        assert client.exists(f"{prefix}ratelimit:api:bursty",
                              f"{prefix}ratelimit:api:quiet") == 2
    finally:
        client.close()
    scraped = httpx.get(metrics, timeout=5).text
    assert 'coexist_api_requests_total{consumer="bursty",outcome="throttled"} 1.0' in scraped
    assert 'coexist_api_requests_total{consumer="bursty",outcome="admitted"} 3.0' in scraped
    assert "coexist_api_ratelimit_fallback_total 0.0" in scraped

    # The inquiry trace: `coexist trace customer:KEY` names who asked and who answered.
    def traced():
        out = subprocess.run(coexist_executable() + ["trace", f"customer:{CUSTOMER}",
                                                     "--format", "json"],
                             env=env, capture_output=True, text=True, timeout=60)
        events = json.loads(out.stdout).get("events", []) if out.returncode == 0 else []
        return [e for e in events if e.get("source") == "api_inquiry"]

    def all_ten():
        events = traced()
        return events if len(events) >= 10 else None

    events = wait_until(all_ten, 20, "the inquiries in coexist trace", poll_s=0.5)
    assert {e["who"] for e in events} == {"bursty", "quiet"}
    assert all("from legacy (flag v" in e["what"] for e in events), events[0]["what"]
