"""The CRM in the chaos run: ``coexist crm-sim`` as the CRM, people typing into it, its faults,
and a verdict read from the CRM's own API (SOQL as an administrator: no coexist code on the
read path).

People (through the simulator's UI path, as sales reps do):

* ``crm_onboard``: a new company typed into the CRM -> exactly one customer in the SoR, whose
  number comes back onto the same account;
* ``crm_duplicate``: an existing customer typed again, in another case and with ", Inc."
  (the same billing postal code). Every other one is saved over the CRM's duplicate warning
  (``allowSave``): coexist must then create no customer and report it
  (``CrmDuplicateAccount``); the rest the CRM's own duplicate rule blocks;
* ``crm_contact``: a new primary contact on an account -> the SoR's contact (the CRM owns it);
* ``crm_forbidden``: the credit limit typed over (the ERP owns it) -> refused, reported
  (``OwnershipViolationReported``), and set back to the SoR's value.

Faults: ``crm_lock`` (the next saves of a few customers fail ``UNABLE_TO_LOCK_ROW``) and
``crm_limit`` (a ``REQUEST_LIMIT_EXCEEDED`` window: every API request refused 403).
The simulator's fault settings are replaced as a whole by each PUT, so this module keeps
what is in force and sends all of it each time.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: The OAuth client coexist logs in as (its secret is made up per run).
CLIENT_ID = "coexist-chaos"
REP = "rep.chaos"
#: Saves of each locked customer that fail ``UNABLE_TO_LOCK_ROW``.
LOCKED_SAVES = 2
#: Customers locked per ``crm_lock`` fault.
LOCKED_PER_FAULT = 4
#: Length of a ``REQUEST_LIMIT_EXCEEDED`` window, in seconds.
LIMIT_WINDOW_S = 6.0
#: How long after the ERPs settled the CRM may take to show every person's edit (onboarding
#: is a poll, a command, a write in the SoR and its fan-out back), in seconds.
CRM_WAIT_S = 120.0
#: What the people do and which faults are injected, per ``crm_*`` kind.
ACTIONS = ("crm_onboard", "crm_duplicate", "crm_contact", "crm_forbidden")
FAULTS = ("crm_lock", "crm_limit")


@dataclass
class CrmPlan:
    onboard: int
    duplicate: int
    contact: int
    forbidden: int
    locks: int
    limits: int

    def kinds(self) -> list[str]:
        return (["crm_onboard"] * self.onboard + ["crm_duplicate"] * self.duplicate
                + ["crm_contact"] * self.contact + ["crm_forbidden"] * self.forbidden
                + ["crm_lock"] * self.locks + ["crm_limit"] * self.limits)


@dataclass
class CrmGroundTruth:
    """What people did in the CRM, for the verdict."""

    #: (account id, name) of each new company.
    onboarded: list[tuple[str, str]] = field(default_factory=list)
    #: (account id or None when the CRM blocked the save, name, customer key, allowSave).
    duplicates: list[tuple[str | None, str, str, bool]] = field(default_factory=list)
    #: customer key -> the contact name typed last.
    contacts: dict[str, str] = field(default_factory=dict)
    #: customer keys whose credit limit was typed over.
    forbidden: list[str] = field(default_factory=list)
    #: customer keys locked by a fault.
    locked: list[str] = field(default_factory=list)


class CrmChannel:
    """The CRM simulator process, the people in it, its faults and its verdict."""

    def __init__(self, home: Path, port: int, seed: int):
        import random

        self.home = home
        self.port = port
        self.secret = secrets.token_urlsafe(16)
        self.rng = random.Random(seed)
        self.truth = CrmGroundTruth()
        self.admin = None
        self.lock = threading.Lock()
        self._locks: dict[str, int] = {}
        self._limit_until = 0.0
        self._n = 0
        self._dups = 0
        #: Customers only the CRM's people touch (no clerk edits them, none is deleted), so
        #: a contact typed in the CRM is the last word on the record.
        self.reserved: list[str] = []
        self._reserved_cycle = 0
        self.ops: Counter = Counter()
        #: Seed customers the CRM's duplicate rule calls one company with another (same
        #: normalised name, same billing postal code or phone): the CRM refuses to show
        #: the second of them (``CrmRefused:DUPLICATES_DETECTED``), by the estate's data.
        self.lookalikes: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ configuration

    def toml(self) -> str:
        """``[subscriptions.crm]`` and ``[crm]`` for the run's ``coexist.toml``."""
        return ('[subscriptions.crm]\ndomains = ["customer"]\n\n'
                f'[crm]\nurl = "{self.url}"\nclient_id = "{CLIENT_ID}"\n'
                'poll_interval_s = 0.5\npause_s = 3\ntimeout_s = 10\n')

    def env(self) -> dict[str, str]:
        """What every coexist process needs (the secret by environment only)."""
        return {"COEXIST_CRM_CLIENT_SECRET": self.secret}

    def sim_env(self) -> dict[str, str]:
        return {"COEXIST_CRM_SIM_CLIENTS": f"{CLIENT_ID}:{self.secret}"}

    def sim_args(self) -> list[str]:
        return ["crm-sim", "--db", str(self.home / "crm.db"), "--port", str(self.port)]

    def connect(self) -> None:
        from workers.crm_sim.admin import CrmSimulatorAdmin

        self.admin = CrmSimulatorAdmin(self.url)

    def find_lookalikes(self, customers) -> set[str]:
        """The customers the CRM's own duplicate rule matches with another one (the rule
        as the simulator documents it, over the accounts the mapping would write)."""
        from coexistence.crm.mapping import account_fields
        from workers.crm_sim.duplicates import keys_of, matches

        docs = [(c.key, keys_of(account_fields(c))) for c in customers]
        by_name: dict[str, list] = {}
        for key, k in docs:
            by_name.setdefault(k[0], []).append((key, k))
        for group in by_name.values():
            for i, (a, ka) in enumerate(group):
                for b, kb in group[i + 1:]:
                    if matches(ka, kb):
                        self.lookalikes.update((a, b))
        return self.lookalikes

    def reserve(self, keys: list[str], share: float = 0.1) -> list[str]:
        """Take a share of ``keys`` for the CRM's people; returns the clerks' keys."""
        n = max(4, int(len(keys) * share))
        # (not a look-alike: the CRM may not show it, and its people edit what it shows)
        self.reserved = [k for k in keys if k not in self.lookalikes][-n:]
        return [k for k in keys if k not in self.reserved]

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()

    # ------------------------------------------------------------------ people and faults

    def act(self, kind: str, legacy, clerk_keys: list[str]) -> None:
        """One person's CRM edit or one fault; ``legacy`` reads customers (names, postal
        codes) for the duplicates."""
        with self.lock:
            self._n += 1
            n = self._n
        getattr(self, "_" + kind.removeprefix("crm_"))(n, legacy, clerk_keys)
        self.ops[kind] += 1

    def _next_reserved(self) -> str:
        key = self.reserved[self._reserved_cycle % len(self.reserved)]
        self._reserved_cycle += 1
        return key

    def _onboard(self, n: int, legacy, clerk_keys) -> None:
        name = f"Walk-In Chaos {n}"
        created = self.admin.person_create(REP, "Account", {
            "Name": name, "BillingPostalCode": f"8{n:04d}", "BillingCountry": "US",
            "BillingCity": "Denver", "BillingStreet": f"{n} Market St"})
        created.raise_for_status()
        self.truth.onboarded.append((created.json()["id"], name))

    def _duplicate(self, n: int, legacy, clerk_keys) -> None:
        key = self.rng.choice(self.reserved)
        record = legacy.get("customer", key)
        postal = next((s.postal_code for s in record.sites if s.postal_code), None)
        name = f"{record.name.title()}, Inc."
        self._dups += 1
        allow = self._dups % 2 == 1
        fields = {"Name": name, "BillingCountry": "US"}
        if postal:
            fields["BillingPostalCode"] = postal
        answer = self.admin.person_create(REP, "Account", fields, allow_duplicate=allow)
        if answer.status_code == 201:
            self.truth.duplicates.append((answer.json()["id"], name, key, allow))
        elif answer.status_code == 400 and "DUPLICATES_DETECTED" in answer.text:
            self.truth.duplicates.append((None, name, key, allow))
        else:
            answer.raise_for_status()

    def _contact(self, n: int, legacy, clerk_keys) -> None:
        key = self._next_reserved()
        account = self.admin.by_external_id("Account", key)
        if account is None:
            raise RuntimeError(f"customer {key} is not in the CRM before its contact edit")
        last = f"Chaos{n}"
        self.admin.person_create(REP, "Contact", {
            "AccountId": account["Id"], "FirstName": "Dana", "LastName": last,
            "Email": f"dana.{n}@example.com", "Phone": f"555-{n:04d}",
            "Primary_Contact__c": True}).raise_for_status()
        self.truth.contacts[key] = f"Dana {last}"

    def _forbidden(self, n: int, legacy, clerk_keys) -> None:
        key = self._next_reserved()
        account = self.admin.by_external_id("Account", key)
        if account is None:
            raise RuntimeError(f"customer {key} is not in the CRM before its forbidden edit")
        self.admin.person_update(REP, "Account", account["Id"], {
            "Credit_Limit__c": float(account["Credit_Limit__c"] or 0) + 99_999
        }).raise_for_status()
        self.truth.forbidden.append(key)

    def _lock(self, n: int, legacy, clerk_keys) -> None:
        keys = self.rng.sample(clerk_keys, min(LOCKED_PER_FAULT, len(clerk_keys)))
        with self.lock:
            self._locks.update({k: LOCKED_SAVES for k in keys})
            self.truth.locked.extend(keys)
            self._put()

    def _limit(self, n: int, legacy, clerk_keys) -> None:
        with self.lock:
            self._limit_until = time.monotonic() + LIMIT_WINDOW_S
            self._put()

    def _put(self) -> None:
        left = max(0.0, self._limit_until - time.monotonic())
        self.admin.faults(lock=dict(self._locks), limit_exceeded_s=round(left, 2))

    def clear_faults(self) -> None:
        with self.lock:
            self._locks.clear()
            self._limit_until = 0.0
            self.admin.faults()

    # ------------------------------------------------------------------ verdict

    def accounts(self) -> list[dict]:
        return self.admin.query("SELECT Id, Name, AccountNumber, Coexist_Id__c, "
                                "ERP_Deleted__c, Credit_Limit__c FROM Account")

    def verdict(self, sor_customers: dict, cloud_get, deleted: set[str],
                exceptions: list[dict] | None) -> dict:
        """The CRM's accounts against the SoR (``sor_customers``: key -> record, the SoR
        read last) and against what people did; ``exceptions``: every exception record."""
        from workers.crm.scenario import CrmPeople
        from workers.scenario import normalised

        def other_copy(record):
            cloud = cloud_get(record.key)
            return cloud if cloud is not None and normalised(cloud) == normalised(record) \
                else None

        people = CrmPeople(self.admin, lambda d: sor_customers.values() if d == "customer"
                           else (), lambda d, k: sor_customers.get(k) if d == "customer"
                           else None, other_copy=other_copy)
        agreement = people.check().agreements["customer"]
        # A look-alike the CRM refused to show is the estate's data, not a loss, when the
        # refusal was reported (the verdict's exception check) or is still being retried.
        refused = {r["key"] for r in exceptions or ()
                   if r["error_type"] == "CrmRefused:DUPLICATES_DETECTED"}
        excused = [k for k in agreement.missing if k in self.lookalikes
                   and (exceptions is None or k in refused)]
        agreement.missing = [k for k in agreement.missing if k not in excused]
        accounts = self.accounts()
        by_id = {a["Id"]: a for a in accounts}
        per_key = Counter(a["Coexist_Id__c"] for a in accounts if a["Coexist_Id__c"])
        twice = sorted(k for k, c in per_key.items() if c > 1)
        problems: list[str] = []
        # Deleted in the SoR: the CRM shows the flag (a delete in the ERP is never a CRM
        # delete).
        keyed = {a["Coexist_Id__c"]: a for a in accounts if a["Coexist_Id__c"]}
        not_flagged = sorted(k for k in deleted if k in keyed
                             and not keyed[k].get("ERP_Deleted__c"))
        by_name: dict[str, list] = {}
        for r in sor_customers.values():
            by_name.setdefault((r.name or "").upper(), []).append(r)
        onboarded_ok = 0
        for account_id, name in self.truth.onboarded:
            a = by_id.get(account_id, {})
            same = by_name.get(name.upper(), [])
            if len(same) != 1:
                problems.append(f"new account {name!r}: {len(same)} customer(s) in the SoR")
            elif a.get("Coexist_Id__c") != same[0].key or not a.get("AccountNumber"):
                problems.append(f"new account {name!r}: not keyed/numbered as customer "
                                f"{same[0].key} in the CRM ({a.get('Coexist_Id__c')})")
            elif cloud_get(same[0].key) is None:
                problems.append(f"new account {name!r}: customer {same[0].key} not in the "
                                "other ERP")
            else:
                onboarded_ok += 1
        dup_created = [d for d in self.truth.duplicates
                       if by_name.get(d[1].upper())]
        for _id, name, _key, _allow in dup_created:
            problems.append(f"duplicate {name!r} became a customer of its own")
        contacts_wrong = [k for k, v in self.truth.contacts.items()
                          if k in sor_customers
                          and (sor_customers[k].contact_name or "").upper() != v.upper()]
        for k in contacts_wrong:
            problems.append(f"contact of {k}: the SoR shows "
                            f"{sor_customers[k].contact_name!r}, the CRM's people typed "
                            f"{self.truth.contacts[k]!r}")
        reported = Counter(r["key"] for r in exceptions or ()
                           if r["error_type"] == "OwnershipViolationReported")
        forbidden = Counter(self.truth.forbidden)
        unreported = sorted(k for k, c in forbidden.items() if reported.get(k, 0) < c)
        for k in unreported if exceptions is not None else ():
            problems.append(f"credit limit of {k} typed over in the CRM: not reported")
        # A duplicate the CRM saved (over its warning, or one its rule did not catch) is
        # coexist's to catch: one CrmDuplicateAccount report each, no customer.
        saved_dups = sum(1 for d in self.truth.duplicates if d[0])
        allowed_dups = sum(1 for d in self.truth.duplicates if d[0] and d[3])
        dup_reports = sum(1 for r in exceptions or () if r["error_type"] == "CrmDuplicateAccount")
        if exceptions is not None and dup_reports != saved_dups:
            problems.append(f"{saved_dups} duplicate(s) saved in the CRM, "
                            f"{dup_reports} CrmDuplicateAccount report(s)")
        return {
            "accounts": len(accounts), "sor_customers": agreement.sor_rows,
            "at_sor_values": agreement.equal, "missing": len(agreement.missing),
            "differ": len(agreement.differ),
            "as_other_erp_spells": len(agreement.as_other_spells),
            "accounts_twice": len(twice), "deleted_not_flagged": len(not_flagged),
            "lookalikes_in_seed": len(self.lookalikes),
            "refused_as_lookalikes": len(excused),
            "onboarded": {"made": len(self.truth.onboarded), "one_customer_each": onboarded_ok},
            "duplicates": {"made": len(self.truth.duplicates),
                           "blocked_by_crm": sum(1 for d in self.truth.duplicates if not d[0]),
                           "saved_over_warning": allowed_dups,
                           "became_customers": len(dup_created), "reported": dup_reports},
            "contacts": {"made": len(self.truth.contacts), "wrong_in_sor": len(contacts_wrong)},
            "forbidden_edits": {"made": len(self.truth.forbidden),
                                "reported": sum(min(reported.get(k, 0), c)
                                                for k, c in forbidden.items()),
                                "unreported": len(unreported)},
            "examples": {"missing": agreement.missing[:5], "differ": agreement.differ[:5],
                         "accounts_twice": twice[:5], "deleted_not_flagged": not_flagged[:5],
                         "problems": problems[:8]},
            "ok": not (agreement.missing or agreement.differ or twice or not_flagged
                       or problems),
        }

    def done(self, sor_customers: dict, cloud_get, deleted: set[str]) -> bool:
        """Whether the CRM shows everything people did (the verdict without the exception
        counts): what the run waits for after the ERPs settled."""
        v = self.verdict(sor_customers, cloud_get, deleted, None)
        return not (v["missing"] or v["differ"] or v["accounts_twice"]
                    or v["deleted_not_flagged"] or v["contacts"]["wrong_in_sor"]
                    or v["onboarded"]["one_customer_each"] != v["onboarded"]["made"])
