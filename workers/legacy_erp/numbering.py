"""The legacy ERP's customer number sequence: a control record, as real ERPs keep one.

``SYSCTL`` holds one row per numbered master (``CTLKEY = 'CUSTNO'``): ``NEXTNO`` is the
next customer number the ERP gives a customer created without one (a green-screen
"next customer number" field, incremented by the create screen).  The number is taken in
the same transaction as the customer's insert: the ``UPDATE`` of the control row locks it
(PostgreSQL row lock; SQLite's write transaction holds the database lock), so two
creates never take one number, and a rolled-back create gives its number back.

People still type numbers by hand (``CUSTMAST.CUSTNO`` is an ordinary key), and coexist
copies the cloud's customers in under the cloud's numbers, so a taken number is skipped:
the number given is the larger of ``NEXTNO`` and one above the highest number in use.

``XCOEXNUM`` is coexist's side of it: which customer a numbered create made, by the
caller's idempotency key (a CRM account's onboarding), so a create that is asked for again
after a crash finds the customer it made instead of making a second one.  It is kept
for good (one row per created customer), unlike the write idempotency keys.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, String, Table, func, select

#: The legacy ERP's control table (its own metadata: created by legacy revision 0004).
NUMBERING_METADATA = MetaData()

SYSCTL = Table(
    "SYSCTL",
    NUMBERING_METADATA,
    Column("CTLKEY", String(10), primary_key=True),
    Column("NEXTNO", BigInteger, nullable=False),
)

XCOEXNUM = Table(
    "XCOEXNUM",
    NUMBERING_METADATA,
    Column("IDEMKEY", String(200), primary_key=True),
    Column("DOMAIN", String(12), nullable=False),
    Column("RECKEY", String(60), nullable=False),
    Column("WRITER", String(10), nullable=False),
    Column("CRTTS", BigInteger, nullable=False),
)

CUSTOMER_SEQUENCE = "CUSTNO"
#: The first number of an empty ERP's sequence.
FIRST_CUSTOMER_NUMBER = 100_000
#: ``CUSTNO`` is CHAR(10) of digits.
MAX_CUSTOMER_NUMBER = 9_999_999_999

def next_number(conn, header, sequence: str = CUSTOMER_SEQUENCE) -> int:
    """Take the next number of ``sequence`` in the caller's transaction (locks the control
    row until it ends).  ``header`` is the numbered master table (its key ``CUSTNO``)."""
    taken = conn.execute(SYSCTL.update().where(sequence == SYSCTL.c.CTLKEY)
                         .values(NEXTNO=SYSCTL.c.NEXTNO + 1)
                         .returning(SYSCTL.c.NEXTNO)).scalar()
    if taken is None:
        conn.execute(SYSCTL.insert().values(CTLKEY=sequence, NEXTNO=FIRST_CUSTOMER_NUMBER + 1))
        taken = FIRST_CUSTOMER_NUMBER + 1
    number = int(taken) - 1
    # Fixed-width digits: the highest key string is the highest number.
    top = conn.execute(select(func.max(header.c.CUSTNO))).scalar()
    used = int(top) if top and str(top).strip().isdigit() else 0
    if used >= number:
        number = used + 1
        conn.execute(SYSCTL.update().where(sequence == SYSCTL.c.CTLKEY)
                     .values(NEXTNO=number + 1))
    if number > MAX_CUSTOMER_NUMBER:
        raise OverflowError(f"the legacy ERP's {sequence} sequence is exhausted ({number})")
    return number


def created_by(conn, idempotency_key: str) -> str | None:
    """The key of the record an earlier numbered create with ``idempotency_key`` made."""
    return conn.execute(select(XCOEXNUM.c.RECKEY)
                        .where(idempotency_key == XCOEXNUM.c.IDEMKEY)).scalar()
