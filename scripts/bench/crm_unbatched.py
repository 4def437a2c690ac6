"""``coexist`` with the CRM channel consumed one message per CRM request: the end-to-end
one-by-one baseline of ``scripts/bench/crm.py --e2e-baseline`` (the same processes, the same
path, only the channel's batching left out).  Not for production: the channel's handler is
marked unbatched before the CLI runs, so ``coexist worker``/``run`` registers the ``crm``
subscription as a plain dramatiq actor (one envelope, one sObject Collection of one record).

    python scripts/bench/crm_unbatched.py worker --threads 8
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import workers.crm.consumer as consumer  # noqa: E402
from workers.router.actors import BATCHED_ATTR  # noqa: E402

_batched = consumer.channel_handler


def _one_by_one(app):
    handler = _batched(app)
    setattr(handler, BATCHED_ATTR, False)
    return handler


consumer.channel_handler = _one_by_one

if __name__ == "__main__":
    from workers.cli import main

    main()
