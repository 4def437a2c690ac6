"""The legacy ERP's SQL schema, as SQLModel table classes (shape only, no I/O).

The shape keeps the habits of an old on-prem ERP on purpose:

* fixed-width UPPER-case table and column names (quoted identifiers on PostgreSQL:
  hand-written SQL must write ``"CUSTMAST"."CUSTNO"``);
* numeric keys as zero-padded CHAR (customer ``10042`` is CUSTNO ``"0000010042"``);
* text as CHAR(n): upper-case, truncated to n, space-padded to n;
* one-letter status codes, ``Y``/``N`` flags;
* dates as ``YYYYMMDD`` integers (``99999999`` open-ended, ``0`` none), times as
  ``HHMMSS`` integers, both in UTC;
* money as integer cents, prices as integer 1/10,000 units, weights in grams;
* fixed repeating columns (five price breaks in CONTPRC, one date/time pair per
  shipment milestone in SHPHDR);
* audit columns on every header table: LCHGUSER (last-change user), LCHGDATE,
  LCHGTIME.

The tables live on ``LEGACY_METADATA``, never on SQLModel's global metadata, so
they are only ever created in the legacy ERP's database (by ``workers``).
"""

from __future__ import annotations

from sqlalchemy import CHAR, BigInteger, Integer, MetaData
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

LEGACY_METADATA = MetaData()

#: Widths of the legacy CHAR columns, in characters.  Translators truncate/pad to these.
KEY_WIDTH = 10  # CUSTNO, ORDNO, SHPNO, INVNO, CONTNO: zero-padded numbers
ITEM_WIDTH = 20  # ITEMNO
WHSE_WIDTH = 10  # WHSE
SITE_WIDTH = 8  # SITENO
USER_WIDTH = 10  # LCHGUSER
NAME_WIDTH = 30  # CUSTNAME, SITENAME, ADDR1/2, ITEMDESC, CONTNAME
CITY_WIDTH = 20
STATE_WIDTH = 15
ZIP_WIDTH = 10
EMAIL_WIDTH = 60
PHONE_WIDTH = 20
TAXID_WIDTH = 20
GROUP_WIDTH = 10
CUSTPO_WIDTH = 22
CARRIER_WIDTH = 20
TRACK_WIDTH = 30
#: CONTPRC holds at most this many quantity breaks (BRKQTY1..5 / BRKPRC1..5).
MAX_PRICE_BREAKS = 5


class LegacyTable(SQLModel, registry=registry(metadata=LEGACY_METADATA)):
    """Base class of the legacy ERP's tables."""


def _char(width: int, **kwargs):
    return Field(sa_type=CHAR(width), **kwargs)


def _key(width: int = KEY_WIDTH):
    return Field(sa_type=CHAR(width), primary_key=True)


def _line_no():
    # Part of a composite key: never let the database invent line numbers.
    return Field(sa_type=Integer, primary_key=True, sa_column_kwargs={"autoincrement": False})


def _int(**kwargs):
    return Field(default=0, sa_type=Integer, **kwargs)


def _bigint(**kwargs):
    return Field(default=0, sa_type=BigInteger, **kwargs)


class Audited(LegacyTable):
    """Audit columns every header table carries (set by whoever writes the row)."""

    LCHGUSER: str = _char(USER_WIDTH)
    LCHGDATE: int = _int()
    LCHGTIME: int = _int()


class CUSTMAST(Audited, table=True):
    """Customer master.  CUSTSTAT: A active, I inactive, H on hold (blocked)."""

    __tablename__ = "CUSTMAST"
    CUSTNO: str = _key()
    CUSTNAME: str = _char(NAME_WIDTH)
    CUSTSTAT: str = _char(1)
    CURRCODE: str = _char(3)
    CRLIMIT: int = _bigint()  # cents
    CRHOLD: str = _char(1)  # Y/N
    TERMSCD: str = _char(3)  # PP, COD, N15, N30, N45, N60, N90
    TAXID: str = _char(TAXID_WIDTH)
    CUSTGRP: str = _char(GROUP_WIDTH)
    REGION: str = _char(GROUP_WIDTH)
    CONTNAME: str = _char(NAME_WIDTH)
    CONTEMAIL: str = _char(EMAIL_WIDTH)  # the one mixed-case column
    CONTPHONE: str = _char(PHONE_WIDTH)


class CUSTSITE(LegacyTable, table=True):
    """Customer bill-to (SITETYPE B) and ship-to (S) sites."""

    __tablename__ = "CUSTSITE"
    CUSTNO: str = _key()
    SITENO: str = _key(SITE_WIDTH)
    SITETYPE: str = _char(1)
    SITENAME: str = _char(NAME_WIDTH)
    ADDR1: str = _char(NAME_WIDTH)
    ADDR2: str = _char(NAME_WIDTH)
    CITY: str = _char(CITY_WIDTH)
    STATE: str = _char(STATE_WIDTH)
    ZIPCODE: str = _char(ZIP_WIDTH)
    COUNTRY: str = _char(2)


class ITEMMAST(Audited, table=True):
    """Item master.  ITEMSTAT: A active, D discontinued, H on hold (blocked)."""

    __tablename__ = "ITEMMAST"
    ITEMNO: str = _key(ITEM_WIDTH)
    ITEMDESC: str = _char(NAME_WIDTH)
    UOM: str = _char(2)
    WEIGHTG: int = _bigint()  # grams
    ITEMSTAT: str = _char(1)
    CURRCODE: str = _char(3)
    LISTPRC: int = _bigint()  # 1/10,000
    STDCOST: int = _bigint()  # 1/10,000


class CONTPRC(Audited, table=True):
    """Contract prices: five fixed break slots; unused slots are all zero."""

    __tablename__ = "CONTPRC"
    CONTNO: str = _key()
    CUSTNO: str = _char(KEY_WIDTH, index=True)
    ITEMNO: str = _char(ITEM_WIDTH)
    CURRCODE: str = _char(3)
    EFFDATE: int = _int()
    EXPDATE: int = _int()  # 99999999 open-ended
    BRKQTY1: int = _int()
    BRKPRC1: int = _bigint()
    BRKQTY2: int = _int()
    BRKPRC2: int = _bigint()
    BRKQTY3: int = _int()
    BRKPRC3: int = _bigint()
    BRKQTY4: int = _int()
    BRKPRC4: int = _bigint()
    BRKQTY5: int = _int()
    BRKPRC5: int = _bigint()


class INVBAL(Audited, table=True):
    """Inventory balance per warehouse and item."""

    __tablename__ = "INVBAL"
    WHSE: str = _key(WHSE_WIDTH)
    ITEMNO: str = _key(ITEM_WIDTH)
    ONHAND: int = _int()
    ALLOC: int = _int()


class ORDHDR(Audited, table=True):
    """Order header.  ORDSTAT: O H A P S I C X; ORDSRC: M (ERP) C (CRM) E (EDI) W (portal)."""

    __tablename__ = "ORDHDR"
    ORDNO: str = _key()
    CUSTNO: str = _char(KEY_WIDTH, index=True)
    SHIPTO: str = _char(SITE_WIDTH)
    ORDSTAT: str = _char(1)
    ORDSRC: str = _char(1)
    CUSTPO: str = _char(CUSTPO_WIDTH)
    CURRCODE: str = _char(3)
    ORDDATE: int = _int()
    ORDTIME: int = _int()
    REQDATE: int = _int()  # 0 none


class ORDLIN(LegacyTable, table=True):
    __tablename__ = "ORDLIN"
    ORDNO: str = _key()
    LINENO: int = _line_no()
    ITEMNO: str = _char(ITEM_WIDTH)
    ORDQTY: int = _int()
    UNITPRC: int = _bigint()  # 1/10,000


class SHPHDR(Audited, table=True):
    """Shipment header: one date/time pair per milestone, 0 when not reached."""

    __tablename__ = "SHPHDR"
    SHPNO: str = _key()
    ORDNO: str = _char(KEY_WIDTH, index=True)
    WHSE: str = _char(WHSE_WIDTH)
    CARRIER: str = _char(CARRIER_WIDTH)
    TRACKNO: str = _char(TRACK_WIDTH)
    PICKDATE: int = _int()
    PICKTIME: int = _int()
    PACKDATE: int = _int()
    PACKTIME: int = _int()
    SHIPDATE: int = _int()
    SHIPTIME: int = _int()
    DLVDATE: int = _int()
    DLVTIME: int = _int()


class SHPLIN(LegacyTable, table=True):
    __tablename__ = "SHPLIN"
    SHPNO: str = _key()
    LINENO: int = _line_no()
    ORDLINE: int = _int()
    ITEMNO: str = _char(ITEM_WIDTH)
    SHPQTY: int = _int()


class INVHDR(Audited, table=True):
    """Invoice header.  INVSTAT: O open (partially paid when AMTPAID > 0), P paid, V void."""

    __tablename__ = "INVHDR"
    INVNO: str = _key()
    ORDNO: str = _char(KEY_WIDTH, index=True)
    CUSTNO: str = _char(KEY_WIDTH, index=True)
    INVSTAT: str = _char(1)
    CURRCODE: str = _char(3)
    INVDATE: int = _int()
    DUEDATE: int = _int()
    TAXAMT: int = _bigint()  # cents
    AMTPAID: int = _bigint()  # cents


class INVLIN(LegacyTable, table=True):
    __tablename__ = "INVLIN"
    INVNO: str = _key()
    LINENO: int = _line_no()
    ITEMNO: str = _char(ITEM_WIDTH)
    ITEMDESC: str = _char(NAME_WIDTH)
    INVQTY: int = _int()
    UNITPRC: int = _bigint()  # 1/10,000


#: Domain -> (header table, child table or None).
LEGACY_TABLES: dict[str, tuple[type[LegacyTable], type[LegacyTable] | None]] = {
    "customer": (CUSTMAST, CUSTSITE),
    "product": (ITEMMAST, None),
    "price": (CONTPRC, None),
    "inventory": (INVBAL, None),
    "order": (ORDHDR, ORDLIN),
    "shipment": (SHPHDR, SHPLIN),
    "invoice": (INVHDR, INVLIN),
}

#: Columns every header table carries for the last change; not part of the canonical record.
AUDIT_COLUMNS: tuple[str, ...] = ("LCHGUSER", "LCHGDATE", "LCHGTIME")
