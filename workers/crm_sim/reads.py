"""Reads of the CRM simulator: SOQL execution, records as the API shows them, describe."""

from __future__ import annotations

from workers.crm_sim import soql
from workers.crm_sim.protocol import SfError
from workers.crm_sim.records import Ctx
from workers.crm_sim.schema import OBJECTS, REFERENCE
from workers.crm_sim.store import Store


def run_query(store: Store, query: soql.Query) -> list[dict]:
    indexed = soql.indexed_lookup(query)
    if indexed is None:
        docs = list(store.scan(query.obj.name))
    else:
        name, values = indexed
        if name == "Id":
            ids = [str(v) for v in values]
        else:
            ids = [i for v in values
                   for i in store.find_external(query.obj.name, name, str(v))]
        found = store.get_many(dict.fromkeys(ids))
        docs = [found[i] for i in dict.fromkeys(ids) if i in found]
    docs = [d for d in docs if soql.matches(query, d)]
    if query.order_by:
        present = [d for d in docs if d.get(query.order_by) is not None]
        absent = [d for d in docs if d.get(query.order_by) is None]
        present.sort(key=lambda d: d[query.order_by], reverse=query.descending)
        docs = present + absent
    if query.limit is not None:
        docs = docs[:query.limit]
    return [{f: d.get(f) for f in query.fields} for d in docs]


def attributes(obj_name: str, doc: dict, ctx: Ctx) -> dict:
    attrs = {"type": obj_name}
    if doc.get("Id"):
        attrs["url"] = f"/services/data/v{ctx.api_version}/sobjects/{obj_name}/{doc['Id']}"
    return attrs


def shown(obj_name: str, doc: dict, ctx: Ctx, fields: str | None) -> dict:
    obj = OBJECTS[obj_name]
    wanted = [f.strip() for f in fields.split(",")] if fields else list(obj.fields)
    for name in wanted:
        if name not in obj.fields:
            raise SfError.one(400, "INVALID_FIELD", f"No such column '{name}' on sobject "
                              f"of type {obj_name}", [name])
    return {"attributes": attributes(obj_name, doc, ctx),
            **{n: doc.get(n) for n in wanted}}


def describe_head(name: str) -> dict:
    obj = OBJECTS[name]
    return {"name": name, "keyPrefix": obj.key_prefix, "custom": name.endswith("__c"),
            "createable": True, "updateable": True, "queryable": True}


def describe(name: str) -> dict:
    obj = OBJECTS[name]
    return {**describe_head(name), "fields": [{
        "name": f.name, "label": f.display, "type": f.type, "length": f.length,
        "nillable": not f.required, "unique": f.unique, "externalId": f.external_id,
        "updateable": f.updateable, "createable": f.updateable,
        "restrictedPicklist": bool(f.picklist) and f.restricted,
        "picklistValues": [{"value": v, "label": v, "active": True} for v in f.picklist],
        "referenceTo": [f.reference_to] if f.type == REFERENCE and f.reference_to else [],
        "relationshipName": f.relationship or None,
    } for f in obj.fields.values()]}
