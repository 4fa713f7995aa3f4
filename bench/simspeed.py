"""Raft simulation speed: schedules per second on one core (the CI test runs 2,000 on two).

python -m bench.simspeed --schedules 300
"""

from __future__ import annotations

import argparse
import json
import time

from tests.raftsim import random_schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", type=int, default=300)
    a = ap.parse_args()
    t0 = time.monotonic()
    acked = 0
    for s in range(a.schedules):
        acked += len(random_schedule(s).acked)
    el = time.monotonic() - t0
    print(
        json.dumps(
            {
                "schedules": a.schedules,
                "seconds": round(el, 2),
                "schedules_per_s": round(a.schedules / el, 1),
                "acknowledged_proposals": acked,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
