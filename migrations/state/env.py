"""alembic environment of coexist's state database (bus + state tables)."""

import workers.tables  # noqa: F401  (registers every state table)
from bus.db import BUS_METADATA
from migrations._env import run
from workers.db import STATE_METADATA

run([BUS_METADATA, STATE_METADATA], version_table="alembic_version")
