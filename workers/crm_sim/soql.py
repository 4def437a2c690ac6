"""A subset of SOQL: enough for an integration to read back what it wrote.

``SELECT f1, f2 FROM Object [WHERE cond [AND cond]...] [ORDER BY f [ASC|DESC]] [LIMIT n]``
with ``cond`` one of ``f = v``, ``f != v``, ``f < v``, ``f <= v``, ``f > v``, ``f >= v``,
``f IN (v, ...)``; values are 'quoted strings' (backslash escapes), numbers, ``true``,
``false``, ``null`` and bare ISO dates/datetimes.  No relationship paths, OR, aggregates or
sub-queries: such a query is answered ``MALFORMED_QUERY`` naming what is not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workers.crm_sim.schema import FieldError, SObject, sobject

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<=|>=|=|<|>|\(|\)|,)"
    r"|(?P<word>[A-Za-z0-9_.:+\-]+))"
)

_OPS = {"=", "!=", "<", "<=", ">", ">="}


@dataclass
class Query:
    obj: SObject
    fields: list[str]
    #: (field, op, value) terms joined by AND; op ``in`` takes a list.
    where: list[tuple[str, str, object]]
    order_by: str | None
    descending: bool
    limit: int | None


def _malformed(message: str) -> FieldError:
    return FieldError("MALFORMED_QUERY", message)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _malformed(f"unexpected token at: {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _value(kind: str, raw: str):
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    low = raw.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        pass
    return raw  # a date or datetime literal, compared as text


def parse(text: str) -> Query:
    tokens = _tokens(text)
    i = 0

    def peek(word: str | None = None) -> bool:
        if i >= len(tokens):
            return False
        return word is None or tokens[i][1].upper() == word

    def take() -> tuple[str, str]:
        nonlocal i
        if i >= len(tokens):
            raise _malformed("unexpected end of query")
        i += 1
        return tokens[i - 1]

    if not peek("SELECT"):
        raise _malformed("a query starts with SELECT")
    take()
    fields = []
    while True:
        kind, name = take()
        if kind != "word":
            raise _malformed(f"expected a field name, got {name!r}")
        if "." in name or "(" in name:
            raise _malformed(f"relationship paths and functions are not supported: {name}")
        fields.append(name)
        if peek(","):
            take()
            continue
        break
    if not peek("FROM"):
        raise _malformed("expected FROM")
    take()
    _, obj_name = take()
    try:
        obj = sobject(obj_name)
    except FieldError:
        raise FieldError("INVALID_TYPE", f"sObject type '{obj_name}' is not supported.") from None
    for name in fields:
        _check_field(obj, name)
    where: list[tuple[str, str, object]] = []
    if peek("WHERE"):
        take()
        while True:
            _, name = take()
            _check_field(obj, name)
            kind, op = take()
            if op.upper() == "IN":
                if take()[1] != "(":
                    raise _malformed("expected ( after IN")
                values = []
                while True:
                    values.append(_value(*take()))
                    sep = take()[1]
                    if sep == ")":
                        break
                    if sep != ",":
                        raise _malformed("expected , or ) in IN list")
                where.append((name, "in", values))
            elif op in _OPS:
                where.append((name, op, _value(*take())))
            else:
                raise _malformed(f"unsupported operator {op!r}")
            if peek("AND"):
                take()
                continue
            if peek("OR"):
                raise _malformed("OR is not supported by this simulator")
            break
    order_by, descending = None, False
    if peek("ORDER"):
        take()
        if not peek("BY"):
            raise _malformed("expected BY after ORDER")
        take()
        _, order_by = take()
        _check_field(obj, order_by)
        if peek("ASC") or peek("DESC"):
            descending = take()[1].upper() == "DESC"
    limit = None
    if peek("LIMIT"):
        take()
        raw = take()[1]
        if not raw.isdigit():
            raise _malformed(f"LIMIT must be a number, got {raw!r}")
        limit = int(raw)
    if i != len(tokens):
        raise _malformed(f"unexpected {tokens[i][1]!r}")
    return Query(obj, fields, where, order_by, descending, limit)


def _check_field(obj: SObject, name: str) -> None:
    if name not in obj.fields:
        raise FieldError("INVALID_FIELD",
                         f"No such column '{name}' on entity '{obj.name}'. If you are attempting "
                         "to use a custom field, be sure to append the '__c' after the custom "
                         "field name.")


def _compare(have, op: str, want) -> bool:
    if op == "in":
        return have in want
    if op == "=":
        return have == want
    if op == "!=":
        return have != want
    if have is None or want is None:
        return False
    try:
        if op == "<":
            return have < want
        if op == "<=":
            return have <= want
        if op == ">":
            return have > want
        return have >= want
    except TypeError:
        return False


def matches(query: Query, doc: dict) -> bool:
    return all(_compare(doc.get(f), op, v) for f, op, v in query.where)


def indexed_lookup(query: Query) -> tuple[str, list] | None:
    """(field, values) when the WHERE pins ``Id`` or an external id to values: no scan."""
    for f, op, v in query.where:
        if f == "Id" or query.obj.fields[f].external_id:
            if op == "=":
                return f, [v]
            if op == "in":
                return f, list(v)
    return None
