"""Linearizability checker speed on generated valid histories (and one corrupted read each).

python -m bench.checker_speed
"""

from __future__ import annotations

import json
import time

from chaos.checker import check
from tests.test_checker import generate


def main() -> None:
    out = []
    # the last case is the hard one for Wing & Gong: 16 writers on a single register
    for n_ops, clients, keys in ((10_000, 16, 8), (50_000, 16, 8), (10_000, 16, 3), (2_000, 16, 1)):
        h = generate(n_ops, clients, keys, seed=1)
        t0 = time.monotonic()
        r = check(h, budget_s=60)
        valid_s = time.monotonic() - t0
        bad = next(o for o in reversed(h) if o.kind == "get" and o.value is not None)
        bad.value = "never-written"
        t0 = time.monotonic()
        r2 = check(h, budget_s=60)
        out.append(
            {
                "ops": n_ops,
                "clients": clients,
                "keys": keys,
                "valid_verdict": r.verdict,
                "valid_s": round(valid_s, 3),
                "corrupted_verdict": r2.verdict,
                "corrupted_s": round(time.monotonic() - t0, 3),
            }
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
