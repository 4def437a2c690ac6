"""alembic environment of what coexist installs into the legacy ERP's database."""

from migrations._env import run
from workers.legacy_erp.capture import CAPTURE_METADATA

run(CAPTURE_METADATA, version_table="XCOEXREV")
