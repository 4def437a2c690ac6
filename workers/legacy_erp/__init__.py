"""The legacy reference ERP: a SQL database (SQLite or PostgreSQL) with change capture.

* ``schema``: ``create_legacy_engine(url)``, ``create_legacy_schema(engine)``;
* ``capture``: the ``CHGLOG`` change log, its triggers, coexist's side tables;
* ``cdc``: ``LegacyChangeFeed`` (``ChangeFeed``), read after a durable checkpoint
  (``workers.checkpoints``) that the router's capture advances with its effects;
* ``adapter``: ``LegacyErp`` (``Erp`` + ``ChangeFeed`` for system ``"legacy"``);
* ``seed``: ``seed_legacy(engine, SampleSpec(...))``.

Submodules are imported where used, so that importing this package costs nothing.
"""
