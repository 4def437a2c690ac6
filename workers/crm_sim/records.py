"""Saving and deleting records the way the platform does, with its automation and events.

One save, in order: resolve relationship references by external id, check every field
(known, writable, typed, within length, allowed picklist value), merge over the stored
record, check required fields, the record faults an admin injected (row lock, validation
rule), the version rule, unique fields, the Account duplicate rule; then write, keep the
formula and automation fields (``Invoice__c.Open_Balance__c``, the roll-up
``Account.Open_Balance__c``, ``Order.Ship_Status__c`` / ``Invoice_Status__c``) and append
one change event per record touched, in the same transaction.

The version rule is the validation rule ``Coexist_Version_Must_Not_Regress`` an admin
installs on every object coexist writes: a save may not lower ``Coexist_Version__c``
(error on that field).  It is how "apply only when newer" holds in the CRM itself, in the
same save as the write, without a read before every batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from workers.crm_sim import duplicates
from workers.crm_sim.faults import Faults
from workers.crm_sim.schema import (
    REFERENCE,
    SHIP_STATUSES,
    WRITABLE,
    FieldError,
    SObject,
    coerce,
    format_datetime,
    is_record_id,
    sobject,
)
from workers.crm_sim.store import Store

VERSION_FIELD = "Coexist_Version__c"
VERSION_RULE_MESSAGE = ("Coexist_Version_Must_Not_Regress: Coexist Version may not go backwards; "
                        "the record already holds a newer ERP version")
_SYSTEM = ("Id", "IsDeleted", "CreatedDate", "CreatedById", "LastModifiedDate",
           "LastModifiedById", "SystemModstamp")


@dataclass
class Ctx:
    """Who is saving, how: what the change events and the rules need to know."""

    api_version: str
    user_id: str
    #: ``changeOrigin`` of the events this request causes ("" for the UI).
    origin: str
    #: ``Sforce-Duplicate-Rule-Header: allowSave=true``.
    allow_save: bool = False
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    transaction_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    sequence: int = 0
    #: Set once an event was appended, so the server wakes long-polling readers.
    wrote_events: bool = False


@dataclass
class Saved:
    id: str
    created: bool


class SaveError(Exception):
    """One record's save refused: the error entries in the REST shape."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.fields = code, message, list(fields or [])
        self.extra = extra

    @classmethod
    def of(cls, err: FieldError) -> SaveError:
        return cls(err.code, err.message, err.fields)

    def rest(self) -> dict:
        """``{message, errorCode, fields}`` (a single-record REST error entry)."""
        if self.extra is not None:
            return self.extra
        return {"message": self.message, "errorCode": self.code, "fields": self.fields}

    def collection(self) -> dict:
        """``{statusCode, message, fields}`` (an sObject Collections error entry)."""
        out = {"statusCode": self.code, "message": self.message, "fields": self.fields}
        if self.extra is not None and "duplicateResult" in self.extra:
            out["duplicateResult"] = self.extra["duplicateResult"]
        return out


class Records:
    """The org's data operations over the store (one instance per simulator)."""

    def __init__(self, store: Store, faults_of):
        self.store = store
        #: Called for the current fault settings (they can be replaced at any time).
        self._faults = faults_of

    @property
    def faults(self) -> Faults:
        return self._faults()

    # ----------------------------------------------------------------- save

    def save(self, ctx: Ctx, obj: SObject, body: dict, existing: dict | None,
             *, preset: dict | None = None) -> Saved:
        """Create (``existing`` None) or update one record; ``preset`` fields come from the
        URL (the external id of an upsert) and skip the writable check.

        Every refusal is raised before the first write, so a refused record has written
        nothing and a collection needs no savepoint per record.
        """
        if obj.name not in WRITABLE:
            raise SaveError("INVALID_TYPE", f"sObject type '{obj.name}' is not writable")
        if not isinstance(body, dict):
            raise SaveError("JSON_PARSER_ERROR", "the record must be a JSON object")
        values = self._values(obj, body)
        values.update(preset or {})
        old = existing or {}
        doc = dict(old) if existing else {
            n: f.default for n, f in obj.fields.items() if f.default is not None}
        doc.update(values)
        required = [n for n, f in obj.fields.items() if f.required]
        required += self.faults.required.get(obj.name, [])
        missing = [n for n in required if doc.get(n) in (None, "")]
        if missing:
            raise SaveError("REQUIRED_FIELD_MISSING",
                            f"Required fields are missing: [{', '.join(missing)}]", missing)
        keys = tuple(str(k) for k in (doc.get("Coexist_Id__c"), old.get("Id")) if k)
        fault = self.faults.record_fault(keys)
        if fault is not None:
            raise SaveError(fault[0], fault[1], [])
        if existing and _lower(doc.get(VERSION_FIELD), old.get(VERSION_FIELD)):
            raise SaveError("FIELD_CUSTOM_VALIDATION_EXCEPTION", VERSION_RULE_MESSAGE,
                            [VERSION_FIELD])
        for name in obj.external_ids:
            f = obj.fields[name]
            if f.unique and doc.get(name) is not None and doc.get(name) != old.get(name):
                clash = [i for i in self.store.find_external(obj.name, name, str(doc[name]))
                         if i != old.get("Id")]
                if clash:
                    raise SaveError("DUPLICATE_VALUE",
                                    f"duplicate value found: {name} duplicates value on record "
                                    f"with id: {clash[0]}", [name])
        dup_matches: list[str] = []
        if obj.name == "Account":
            dup_matches = self._duplicates(ctx, doc, old)
        created = existing is None
        if created:
            doc["Id"] = self.store.next_id(obj.name)
            doc["IsDeleted"] = False
            doc["CreatedDate"] = format_datetime(ctx.now)
            doc["CreatedById"] = ctx.user_id
        doc["LastModifiedDate"] = doc["SystemModstamp"] = format_datetime(ctx.now)
        doc["LastModifiedById"] = ctx.user_id
        self._formulas(obj, doc)
        self.store.put(doc, obj.name, existing)
        if obj.name == "Account" and (created or not _same(doc, old, DUPLICATE_WATCHED)):
            self.store.set_dupkeys(doc["Id"], *duplicates.keys_of(doc))
            if dup_matches:
                self._report_duplicates(ctx, [doc["Id"], *dup_matches])
        self._event(ctx, obj, doc, old if existing else None)
        self._automation(ctx, obj, doc, old)
        return Saved(doc["Id"], created)

    def _values(self, obj: SObject, body: dict) -> dict:
        values: dict = {}
        relationships = obj.relationships
        for name, raw in body.items():
            if name == "attributes":
                continue
            if name in relationships:
                f = relationships[name]
                values[f.name] = self._resolve(f.reference_to, f.name, raw)
                continue
            f = obj.fields.get(name)
            if f is None:
                raise SaveError("INVALID_FIELD",
                                f"No such column '{name}' on sobject of type {obj.name}", [name])
            if not f.updateable or name in _SYSTEM:
                raise SaveError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                f"Unable to create/update fields: {name}. Please check the "
                                "security settings of this field and verify that it is "
                                "read/write for your profile or permission set.", [name])
            try:
                value = coerce(obj, f, raw)
            except FieldError as err:
                raise SaveError.of(err) from None
            if f.type == REFERENCE and value is not None:
                target = self.store.get(value)
                if target is None or not value.startswith(sobject(f.reference_to).key_prefix):
                    raise SaveError("INVALID_CROSS_REFERENCE_KEY",
                                    f"invalid cross reference id: {value}", [name])
            values[name] = value
        return values

    def _resolve(self, target_name: str, field_name: str, raw) -> str | None:
        """A relationship given as ``{"ExtField__c": "value"}``: the target record's Id."""
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise SaveError("INVALID_FIELD", f"{field_name}: a relationship must be an object "
                            "naming one external id", [field_name])
        keys = [k for k in raw if k != "attributes"]
        target = sobject(target_name)
        if len(keys) != 1 or keys[0] not in target.fields:
            raise SaveError("INVALID_FIELD", f"{field_name}: name exactly one field of "
                            f"{target_name}", [field_name])
        ext = keys[0]
        value = str(raw[ext])
        if ext == "Id":
            found = [value] if self.store.get(value) is not None else []
        elif target.fields[ext].external_id:
            found = self.store.find_external(target_name, ext, value)
        else:
            raise SaveError("INVALID_FIELD", f"{ext} is not an external id of {target_name}",
                            [field_name])
        if not found:
            raise SaveError("INVALID_FIELD", f"Foreign key external ID: {value} not found for "
                            f"field {ext} in entity {target_name}", [field_name])
        if len(found) > 1:
            raise SaveError("DUPLICATE_EXTERNAL_ID", f"Foreign key external ID: {value} found "
                            f"more than once for field {ext} in entity {target_name}",
                            [field_name])
        return found[0]

    def _duplicates(self, ctx: Ctx, doc: dict, old: dict) -> list[str]:
        """Ids the duplicate rule matches (empty when allowed to save or nothing matches
        being blocked raises)."""
        if old and _same(doc, old, DUPLICATE_WATCHED):
            return []
        mine = duplicates.keys_of(doc)
        found = [id_ for id_, postal, phone in self.store.dup_candidates(mine[0])
                 if id_ != old.get("Id") and duplicates.matches(mine, (mine[0], postal, phone))]
        if found and not ctx.allow_save:
            entry = duplicates.duplicate_error(ctx.api_version, found)
            raise SaveError("DUPLICATES_DETECTED", entry["message"], [], extra=entry)
        return found

    def _report_duplicates(self, ctx: Ctx, ids: list[str]) -> None:
        set_id = self.store.next_id("DuplicateRecordSet")
        stamp = format_datetime(ctx.now)
        base = {"IsDeleted": False, "CreatedDate": stamp, "CreatedById": ctx.user_id,
                "LastModifiedDate": stamp, "LastModifiedById": ctx.user_id,
                "SystemModstamp": stamp}
        self.store.put({**base, "Id": set_id, "DuplicateRuleId": duplicates.DUPLICATE_RULE,
                        "RecordCount": len(ids)}, "DuplicateRecordSet")
        for record in ids:
            self.store.put({**base, "Id": self.store.next_id("DuplicateRecordItem"),
                            "DuplicateRecordSetId": set_id, "RecordId": record},
                           "DuplicateRecordItem")

    @staticmethod
    def _formulas(obj: SObject, doc: dict) -> None:
        if obj.name == "Invoice__c":
            if doc.get("Status__c") == "Void":
                doc["Open_Balance__c"] = 0.0
            else:
                balance = (doc.get("Total__c") or 0.0) - (doc.get("Amount_Paid__c") or 0.0)
                doc["Open_Balance__c"] = round(max(balance, 0.0), 2)
        elif obj.name == "Account" and doc.get("Open_Balance__c") is None:
            doc["Open_Balance__c"] = 0.0

    # ----------------------------------------------------------------- automation

    def _automation(self, ctx: Ctx, obj: SObject, doc: dict, old: dict) -> None:
        """Roll-up and flows that keep parents current when a child changes."""
        if obj.name == "Invoice__c":
            for parent in {doc.get("Account__c"), old.get("Account__c")} - {None}:
                self._recompute(ctx, parent, "Open_Balance__c", self._open_balance)
            for parent in {doc.get("Order__c"), old.get("Order__c")} - {None}:
                self._recompute(ctx, parent, "Invoice_Status__c", self._invoice_status)
        elif obj.name == "Shipment__c":
            for parent in {doc.get("Order__c"), old.get("Order__c")} - {None}:
                self._recompute(ctx, parent, "Ship_Status__c", self._ship_status)

    def _recompute(self, ctx: Ctx, parent_id: str, name: str, compute) -> None:
        parent = self.store.get(parent_id)
        if parent is None:
            return
        value = compute(parent_id)
        if parent.get(name) == value:
            return
        before = dict(parent)
        parent[name] = value
        parent["SystemModstamp"] = format_datetime(ctx.now)
        obj_name = _object_of(parent_id)
        self.store.put(parent, obj_name, before)
        self._event(ctx, sobject(obj_name), parent, before)

    def _open_balance(self, account_id: str) -> float:
        total = sum((i.get("Open_Balance__c") or 0.0)
                    for i in self.store.children(account_id, "Account__c")
                    if not i.get("ERP_Deleted__c"))
        return round(total, 2)

    def _ship_status(self, order_id: str) -> str:
        prefix = sobject("Shipment__c").key_prefix
        ranks = [SHIP_STATUSES.index(s["Status__c"])
                 for s in self.store.children(order_id, "Order__c")
                 if s["Id"].startswith(prefix) and not s.get("ERP_Deleted__c")]
        return SHIP_STATUSES[max(ranks)] if ranks else "Not Shipped"

    def _invoice_status(self, order_id: str) -> str:
        invoices = [i for i in self.store.children(order_id, "Order__c")
                    if i.get("Id", "").startswith(sobject("Invoice__c").key_prefix)
                    and not i.get("ERP_Deleted__c")]
        if not invoices:
            return "Not Invoiced"
        latest = max(invoices, key=lambda i: (i.get("Issued_On__c") or "", i["Id"]))
        return latest["Status__c"]

    # ----------------------------------------------------------------- delete

    def delete(self, ctx: Ctx, obj: SObject, doc: dict) -> None:
        if obj.name not in WRITABLE:
            raise SaveError("INVALID_TYPE", f"sObject type '{obj.name}' is not deletable")
        if obj.name == "Account":
            orders = self.store.children(doc["Id"], "AccountId")
            if any(o["Id"].startswith(sobject("Order").key_prefix) for o in orders):
                raise SaveError("DELETE_FAILED",
                                "Your attempt to delete this account could not be completed "
                                "because it is associated with orders.", [])
        # Master-detail children go with their parent.
        for child_field in ("Account__c", "Order__c", "AccountId"):
            for child in self.store.children(doc["Id"], child_field):
                child_obj = sobject(_object_of(child["Id"]))
                if child_obj.fields[child_field].required or child_obj.name == "Contact":
                    self._delete_one(ctx, child_obj, child)
        self._delete_one(ctx, obj, doc)
        self._automation(ctx, obj, {}, doc)

    def _delete_one(self, ctx: Ctx, obj: SObject, doc: dict) -> None:
        self.store.mark_deleted(doc["Id"])
        self._append(ctx, obj, doc["Id"], "DELETE", [], [], {})

    # ----------------------------------------------------------------- change events

    def _event(self, ctx: Ctx, obj: SObject, doc: dict, old: dict | None) -> None:
        if not obj.cdc:
            return
        if old is None:
            fields = {k: v for k, v in doc.items()
                      if v is not None and k not in ("Id", "IsDeleted", "SystemModstamp")}
            self._append(ctx, obj, doc["Id"], "CREATE", [], [], fields)
            return
        changed = [k for k, v in doc.items() if k != "SystemModstamp" and old.get(k) != v]
        nulled = [k for k in changed if doc.get(k) is None]
        self._append(ctx, obj, doc["Id"], "UPDATE", changed, nulled,
                     {k: doc[k] for k in changed if doc.get(k) is not None})

    def _append(self, ctx: Ctx, obj: SObject, id_: str, change_type: str, changed: list[str],
                nulled: list[str], fields: dict) -> None:
        ctx.sequence += 1
        commit_ms = int(ctx.now.timestamp() * 1000)
        header = {
            "entityName": obj.name,
            "recordIds": [id_],
            "changeType": change_type,
            "changeOrigin": ctx.origin,
            "transactionKey": ctx.transaction_key,
            "sequenceNumber": ctx.sequence,
            "commitTimestamp": commit_ms,
            "commitUser": ctx.user_id,
            "changedFields": changed,
            "nulledFields": nulled,
            "diffFields": [],
        }
        self.store.append_event(commit_ms, {"ChangeEventHeader": header, **fields})
        ctx.wrote_events = True


#: The fields the duplicate rule's keys come from (``duplicates.keys_of``).
DUPLICATE_WATCHED = ("Name", "BillingPostalCode", "Phone")


def _same(doc: dict, old: dict, names: tuple[str, ...]) -> bool:
    return all(doc.get(n) == old.get(n) for n in names)


def _lower(new, old) -> bool:
    return new is not None and old is not None and new < old


_PREFIXES: dict[str, str] = {}


def _object_of(record_id: str) -> str:
    if not _PREFIXES:
        from workers.crm_sim.schema import OBJECTS

        _PREFIXES.update({o.key_prefix: o.name for o in OBJECTS.values()})
    return _PREFIXES[record_id[:3]]


def object_of(record_id: str) -> str | None:
    """The object an id belongs to (by key prefix), or ``None``."""
    if not is_record_id(record_id):
        return None
    try:
        return _object_of(record_id)
    except KeyError:
        return None
