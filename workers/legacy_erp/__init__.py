"""The legacy reference ERP: a SQL database (SQLite or PostgreSQL) with change capture.

* ``schema``: ``create_legacy_engine(url)``, ``create_legacy_schema(engine)``;
* ``capture``: the ``CHGLOG`` change log, its triggers, coexist's side tables;
* ``cdc``: ``LegacyChangeFeed`` (``ChangeFeed``) and ``consume_batch``, which
  advances a durable checkpoint (``workers.checkpoints``) with the consumer's
  effects;
* ``adapter``: ``LegacyErp`` (``Erp`` + ``ChangeFeed`` for system ``"legacy"``);
* ``seed``: ``seed_legacy(engine, SampleSpec(...))``.

Submodules are imported where used, so that importing this package costs nothing.
"""
