"""``python -m gateway.app.fleet_worker``: how the supervisor of an instance in a fleet
(``peers``) starts a worker: ``gateway.app.worker`` with its own link to Redis, on
which it queues writes itself. A worker of a gateway alone is started as
``gateway.app.worker`` and never imports redis."""

from __future__ import annotations

import sys

from gateway.app import worker
from gateway.app.fleet_queue import WorkerQueue


def main(argv: list[str] | None = None) -> int:
    return worker.main(argv, fleet=WorkerQueue)


if __name__ == "__main__":
    sys.exit(main())
