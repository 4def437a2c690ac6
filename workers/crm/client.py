"""The CRM adapter: ``coexistence.crm.ports.Crm`` over Salesforce REST (httpx).

Failures are classified before they leave this module, and nothing is retried here (the
bus retries a message; one layer retries):

* per record, in the sObject Collections results: ``UNABLE_TO_LOCK_ROW`` and a parent not
  in the CRM yet (``Foreign key external ID ... not found``) are ``Retry``; the version
  rule's refusal (``FIELD_CUSTOM_VALIDATION_EXCEPTION`` on ``Coexist_Version__c``) is
  ``Stale``; every other error (``DUPLICATES_DETECTED``, ``DUPLICATE_VALUE``,
  ``REQUIRED_FIELD_MISSING``, ``INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST``, a custom
  validation rule...) is ``Refused`` with the CRM's message and the ids it names;
* per request: timeouts, connection errors, a connection cut mid-answer and 5xx raise
  ``CrmUnavailable`` (technical); 401 ``INVALID_SESSION_ID`` gets a new token and the
  request is sent once more; 403 ``REQUEST_LIMIT_EXCEEDED`` raises ``CrmPaused``; any
  other 4xx raises ``CrmRequestRefused`` (business).

The API budget: every answer's ``Sforce-Limit-Info: api-usage=n/max`` updates the client's
view of it.  From ``slow_fraction`` of the budget used, each request first waits, longer
as the budget runs out (at most ``max_delay_s``); from ``pause_fraction`` the client sends
nothing and raises ``CrmPaused`` (what is left belongs to the people using the CRM), and
reads ``/limits`` at most every ``probe_s`` to see whether the budget came back.

A write that is cut off mid-answer may have been applied; sending it again is harmless:
the same record at the same version is an equal-version save the version rule allows.

Credentials (OAuth client id and secret) come from the caller's settings, never from
code, and are never logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from coexistence.crm.mapping import deleted_sobject, to_sobject
from coexistence.crm.ports import (
    COEXIST_CLIENT,
    CORRELATION_FIELD,
    CRM_OBJECTS,
    EXTERNAL_ID,
    MAX_BATCH,
    VERSION_FIELD,
    Absent,
    ApiBudget,
    CrmChange,
    CrmPaused,
    CrmRecord,
    CrmRequestRefused,
    CrmUnavailable,
    CrmUpsert,
    Refused,
    ReplayExpired,
    Retry,
    Stale,
    Synced,
    UpsertResult,
)

log = logging.getLogger("coexist.crm")

#: Salesforce REST API version the adapter speaks (sObject Collections upsert needs >= 46).
CRM_API_VERSION = "60.0"
#: Per-request timeout (connect, read, write, pool), in seconds.
CRM_TIMEOUT_S = 30.0
#: Fraction of the daily budget from which every request waits first.
CRM_BUDGET_SLOW_FRACTION = 0.90
#: Fraction of the daily budget from which the channel pauses (the rest is for people).
CRM_BUDGET_PAUSE_FRACTION = 0.98
#: Longest wait before a request while the budget runs low, in seconds.
CRM_BUDGET_MAX_DELAY_S = 2.0
#: How often a paused client reads /limits to see whether the budget returned, in seconds.
CRM_BUDGET_PROBE_S = 60.0
#: Keep-alive connections kept in the pool.
CRM_POOL_CONNECTIONS = 10

_RETRY_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})
_MISSING_PARENT = re.compile(r"Foreign key external ID: .* not found")
_RECORD_ID = re.compile(r"\b([a-zA-Z0-9]{3}[a-zA-Z0-9]{12}(?:[a-zA-Z0-9]{3})?)\b")


class CrmClient:
    """``Crm`` for a Salesforce org (or the CRM simulator).

    One instance per process, shared by its threads: the pooled ``httpx.Client`` is
    thread-safe, and the token and budget are guarded by a lock.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str = "",
        api_version: str = CRM_API_VERSION,
        timeout_s: float = CRM_TIMEOUT_S,
        allow_duplicates: bool = False,
        slow_fraction: float = CRM_BUDGET_SLOW_FRACTION,
        pause_fraction: float = CRM_BUDGET_PAUSE_FRACTION,
        max_delay_s: float = CRM_BUDGET_MAX_DELAY_S,
        probe_s: float = CRM_BUDGET_PROBE_S,
        feed_wait_ms: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        verify: Any = True,
        transport: httpx.BaseTransport | None = None,
    ):
        self.login_url = base_url.rstrip("/")
        self._client_id, self._client_secret = client_id, client_secret
        self.api_version = api_version
        self.allow_duplicates = allow_duplicates
        self.slow_fraction, self.pause_fraction = slow_fraction, pause_fraction
        self.max_delay_s, self.probe_s = max_delay_s, probe_s
        self.feed_wait_ms = feed_wait_ms
        self._sleep, self._clock = sleep, clock
        limits = httpx.Limits(max_connections=CRM_POOL_CONNECTIONS,
                              max_keepalive_connections=CRM_POOL_CONNECTIONS)
        self.http = httpx.Client(timeout=timeout_s, limits=limits, verify=verify,
                                 transport=transport,
                                 headers={"Accept": "application/json",
                                          "Sforce-Call-Options": f"client={COEXIST_CLIENT}"})
        self._lock = threading.Lock()
        self._token: str | None = None
        self._instance = self.login_url
        self._budget: ApiBudget | None = None
        self._last_probe = float("-inf")
        #: Seconds waited for the budget (a metric; approximate under threads).
        self.waited_s = 0.0

    def close(self) -> None:
        self.http.close()

    # ----------------------------------------------------------------- transport

    def _login(self) -> None:
        try:
            response = self.http.post(f"{self.login_url}/services/oauth2/token", data={
                "grant_type": "client_credentials", "client_id": self._client_id,
                "client_secret": self._client_secret})
        except httpx.HTTPError as exc:
            raise CrmUnavailable(f"CRM login failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            detail = _oauth_error(response)
            raise CrmUnavailable(f"CRM login refused ({response.status_code}): {detail}; check "
                                 "the CRM client id and secret in the settings")
        answer = response.json()
        self._token = answer["access_token"]
        self._instance = answer.get("instance_url") or self.login_url

    def _url(self, path: str) -> str:
        if path.startswith("/services/"):
            return f"{self._instance}{path}"
        return f"{self._instance}/services/data/v{self.api_version}/{path}"

    def _call(self, method: str, path: str, *, budgeted: bool = True,
              **kwargs) -> httpx.Response:
        """One request: budget check, token, one re-login on 401, classification."""
        if budgeted:
            self._wait_for_budget()
        for attempt in (1, 2):
            with self._lock:
                if self._token is None:
                    self._login()
                token = self._token
            headers = dict(kwargs.pop("headers", None) or {})
            headers["Authorization"] = f"Bearer {token}"
            try:
                response = self.http.request(method, self._url(path), headers=headers,
                                             **kwargs)
            except httpx.HTTPError as exc:
                raise CrmUnavailable(f"CRM {method} {path}: {type(exc).__name__}: {exc}"
                                     ) from exc
            kwargs["headers"] = headers
            self._note_usage(response)
            if response.status_code == 401 and attempt == 1:
                with self._lock:
                    if self._token == token:
                        self._token = None
                continue
            return self._classify(method, path, response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _classify(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        if status < 300 or status == 300:
            return response
        code, message = _first_error(response)
        if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
            raise CrmPaused(f"CRM API budget spent: {message}", self._budget)
        if status >= 500 or status == 401:
            raise CrmUnavailable(f"CRM {method} {path} answered {status} {code}: {message}")
        raise CrmRequestRefused(status, code, message)

    def _note_usage(self, response: httpx.Response) -> None:
        info = response.headers.get("sforce-limit-info", "")
        match = re.search(r"api-usage=(\d+)/(\d+)", info)
        if match:
            with self._lock:
                self._budget = ApiBudget(int(match.group(1)), int(match.group(2)))

    def _wait_for_budget(self) -> None:
        budget = self._budget
        if budget is None or budget.fraction_used < self.slow_fraction:
            return
        if budget.fraction_used >= self.pause_fraction:
            now = self._clock()
            if now - self._last_probe < self.probe_s:
                raise CrmPaused(f"CRM API budget at {budget.used}/{budget.max}: the channel "
                                "waits for it to return", budget)
            self._last_probe = now
            self.budget(refresh=True)
            budget = self._budget or budget
            if budget.fraction_used >= self.pause_fraction:
                raise CrmPaused(f"CRM API budget at {budget.used}/{budget.max}: the channel "
                                "waits for it to return", budget)
        if budget.fraction_used >= self.slow_fraction:
            span = max(self.pause_fraction - self.slow_fraction, 1e-9)
            share = min((budget.fraction_used - self.slow_fraction) / span, 1.0)
            delay = self.max_delay_s * share
            if delay > 0:
                self.waited_s += delay
                self._sleep(delay)

    # ----------------------------------------------------------------- writes

    def upsert(self, domain: str, items: Sequence[CrmUpsert]) -> list[UpsertResult]:
        if not items:
            return []
        if len(items) > MAX_BATCH:
            raise ValueError(f"{len(items)} records in one batch; at most {MAX_BATCH}")
        keys = [i.key for i in items]
        if len(set(keys)) != len(keys):
            raise ValueError("a batch must not name one key twice (the CRM refuses both)")
        sobject = CRM_OBJECTS[domain]
        present = self._existing(sobject, [i.key for i in items if i.record is None])
        results: dict[int, UpsertResult] = {}
        records, positions = [], []
        for n, item in enumerate(items):
            if item.record is None:
                if item.key not in present:
                    results[n] = Absent(item.key)
                    continue
                body = deleted_sobject(domain, item.key, version=item.version,
                                       correlation_id=item.correlation_id, sor=item.sor)
            else:
                body = to_sobject(item.record, version=item.version,
                                  correlation_id=item.correlation_id, sor=item.sor)
            records.append({"attributes": {"type": sobject}, **body})
            positions.append(n)
        if records:
            headers = {}
            if self.allow_duplicates:
                headers["Sforce-Duplicate-Rule-Header"] = "allowSave=true"
            response = self._call("PATCH", f"composite/sobjects/{sobject}/{EXTERNAL_ID}",
                                  json={"allOrNone": False, "records": records},
                                  headers=headers)
            answers = response.json()
            if not isinstance(answers, list) or len(answers) != len(records):
                raise CrmUnavailable(f"CRM answered {len(answers)} results for "
                                     f"{len(records)} records")
            for n, answer in zip(positions, answers, strict=True):
                results[n] = _result(items[n].key, answer)
        return [results[n] for n in range(len(items))]

    def _existing(self, sobject: str, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        quoted = ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in keys)
        rows = self.query(f"SELECT {EXTERNAL_ID} FROM {sobject} WHERE {EXTERNAL_ID} IN "
                          f"({quoted})")
        return {r[EXTERNAL_ID] for r in rows}

    def link(self, account_id: str, key: str, *, correlation_id: str) -> Synced | Refused:
        try:
            self._call("PATCH", f"sobjects/Account/{account_id}",
                       json={EXTERNAL_ID: key, CORRELATION_FIELD: correlation_id})
        except CrmRequestRefused as err:
            return Refused(key, err.code, err.crm_message, (),
                           tuple(_RECORD_ID.findall(err.crm_message)))
        return Synced(key, account_id, False)

    # ----------------------------------------------------------------- reads

    def query(self, soql: str) -> list[dict]:
        """Every record of a SOQL query (all pages), without ``attributes``."""
        out: list[dict] = []
        response = self._call("GET", "query", params={"q": soql})
        while True:
            page = response.json()
            out.extend({k: v for k, v in r.items() if k != "attributes"}
                       for r in page["records"])
            if page.get("done", True):
                return out
            response = self._call("GET", page["nextRecordsUrl"])

    def get(self, sobject: str, crm_id: str) -> CrmRecord | None:
        try:
            response = self._call("GET", f"sobjects/{sobject}/{crm_id}")
        except CrmRequestRefused as err:
            if err.status == 404:
                return None
            raise
        return _record(sobject, response.json())

    def find(self, domain: str, key: str) -> CrmRecord | None:
        sobject = CRM_OBJECTS[domain]
        try:
            response = self._call("GET", f"sobjects/{sobject}/{EXTERNAL_ID}/{key}")
        except CrmRequestRefused as err:
            if err.status == 404:
                return None
            raise
        return _record(sobject, response.json())

    def duplicates_of(self, account_id: str) -> list[CrmRecord]:
        sets = self.query("SELECT DuplicateRecordSetId FROM DuplicateRecordItem WHERE "
                          f"RecordId = '{account_id}'")
        set_ids = sorted({r["DuplicateRecordSetId"] for r in sets})
        if not set_ids:
            return []
        members = self.query("SELECT RecordId FROM DuplicateRecordItem WHERE "
                             f"DuplicateRecordSetId IN ({_quoted(set_ids)})")
        others = sorted({r["RecordId"] for r in members} - {account_id})
        if not others:
            return []
        rows = self.query(f"SELECT Id, Name, {EXTERNAL_ID}, {VERSION_FIELD} FROM Account "
                          f"WHERE Id IN ({_quoted(others)})")
        return [CrmRecord("Account", r["Id"], r) for r in rows]

    def budget(self, *, refresh: bool = False) -> ApiBudget:
        if refresh or self._budget is None:
            response = self._call("GET", "limits", budgeted=False)
            daily = response.json()["DailyApiRequests"]
            seen = ApiBudget(daily["Max"] - daily["Remaining"], daily["Max"])
            with self._lock:
                # /limits counts itself; the header of its answer is the newer figure.
                if self._budget is None or refresh:
                    self._budget = max(seen, self._budget or seen, key=lambda b: b.used)
        return self._budget  # type: ignore[return-value]

    def changes(self, after: int, limit: int) -> list[CrmChange]:
        try:
            response = self._call(
                "GET", "/services/pubsub/topic/data/ChangeEvents", budgeted=False,
                params={"replayPreset": "CUSTOM", "replayId": after,
                        "numRequested": min(limit, 1000), "waitMs": self.feed_wait_ms})
        except CrmRequestRefused as err:
            if err.code == "INVALID_REPLAY_ID":
                raise ReplayExpired(f"CRM change feed: {err.crm_message}") from err
            raise
        return [_change(e) for e in response.json()["events"]]


# ----------------------------------------------------------------- answers


def _first_error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    entry = body[0] if isinstance(body, list) and body else body
    if isinstance(entry, dict):
        return (str(entry.get("errorCode") or entry.get("error") or ""),
                str(entry.get("message") or entry.get("error_description") or ""))
    return "", str(body)[:200]


def _oauth_error(response: httpx.Response) -> str:
    code, message = _first_error(response)
    return f"{code} {message}".strip() or f"HTTP {response.status_code}"


def _result(key: str, answer: dict) -> UpsertResult:
    if answer.get("success"):
        return Synced(key, answer["id"], bool(answer.get("created")))
    errors = answer.get("errors") or [{}]
    error = errors[0]
    code = str(error.get("statusCode", ""))
    message = str(error.get("message", ""))
    fields = tuple(error.get("fields") or ())
    if code == "FIELD_CUSTOM_VALIDATION_EXCEPTION" and fields == (VERSION_FIELD,):
        return Stale(key)
    if code in _RETRY_CODES or (code == "INVALID_FIELD" and _MISSING_PARENT.search(message)):
        return Retry(key, code, message)
    matched: list[str] = []
    dup = error.get("duplicateResult")
    if dup:
        for result in dup.get("matchResults", []):
            matched.extend(m["record"]["Id"] for m in result.get("matchRecords", []))
    elif code == "DUPLICATE_VALUE":
        matched.extend(_RECORD_ID.findall(message.rpartition(":")[2]))
    return Refused(key, code, message, fields, tuple(matched))


def _record(sobject: str, doc: dict) -> CrmRecord:
    fields = {k: v for k, v in doc.items() if k != "attributes"}
    return CrmRecord(sobject, fields["Id"], fields)


def _change(raw: dict) -> CrmChange:
    event = raw["event"]
    header = event["ChangeEventHeader"]
    fields = {k: v for k, v in event.items() if k != "ChangeEventHeader"}
    return CrmChange(
        replay_id=int(raw["replayId"]), sobject=header["entityName"],
        record_id=header["recordIds"][0], change_type=header["changeType"],
        changed_fields=tuple(header.get("changedFields") or ()), fields=fields,
        origin=header.get("changeOrigin") or "", commit_ms=int(header["commitTimestamp"]),
        user_id=header.get("commitUser", ""))


def _quoted(values: list[str]) -> str:
    return ",".join(f"'{v}'" for v in values)
