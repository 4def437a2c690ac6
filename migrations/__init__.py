"""Schema migrations (alembic) for what coexist owns in its databases.

Two environments, each with its own version table:

* ``state/``  - coexist's state database: the bus tables (``bus.tables``) and the
  state tables (``workers.tables``); version table ``alembic_version``.
* ``legacy/`` - what coexist installs into the legacy ERP's database: the change log
  ``CHGLOG`` and the side tables (``workers.legacy_erp.capture``); version table
  ``XCOEXREV``.  The capture triggers and functions are not in revisions: they are
  generated from the captured tables and replaced whenever the legacy side is
  upgraded (see ``workers.migrate``).

Run them with ``coexist db upgrade`` / ``coexist db current`` (``workers.migrate``);
``alembic.ini`` at the repository root is for developers writing a revision.
"""

from pathlib import Path

#: Folder of each environment, by target name.
LOCATIONS = {name: Path(__file__).parent / name for name in ("state", "legacy")}
