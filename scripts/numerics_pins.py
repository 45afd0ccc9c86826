"""Regenerate ``bench/numerics_pins.json``, the reference numerics of every registered protocol (bench/numerics.py).

    python scripts/numerics_pins.py            # rewrite the pins that moved or are missing, print what changed
    python scripts/numerics_pins.py --check    # only report (exit 1 if the pins are stale in any way)

An entry whose values are all reproduced within tolerance, under the same protocol hash, is kept bit for bit, so
regenerating on another machine changes no digest (the digest is in every record).

Run it after a change that intends to move numbers, and only then: ``tests/test_numerics.py`` fails on any
unintended move. A move in a protocol that is frozen needs a new version of that protocol; in a provisional one,
a line in docs/protocols.md saying what changed. The file is written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from bench import numerics
from bench.protocol import PROTOCOLS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report drifts, write nothing")
    args = parser.parse_args()
    protocols = [PROTOCOLS.get(n) for n in PROTOCOLS]
    try:
        old = numerics.load_pins()
    except numerics.PinsError as e:
        print(f"no usable pins yet ({e})")
        old = {}
    new = numerics.pins_for(protocols)
    stale = 0  # entries the tests would refuse: moved values, new protocols, changed hashes, dropped protocols
    for pid, entry in new["protocols"].items():
        before = old.get(pid)
        if before is None:
            print(f"{pid}: new ({len(entry['values'])} values)")
            stale += 1
            continue
        drifts = numerics.compare(pid, before.get("values", {}), entry["values"])
        same_hash = before.get("sha256") == entry["sha256"]
        if not drifts and same_hash and before.get("digest") == numerics.digest(before.get("values", {})):
            # Unchanged within tolerance: keep the pinned bits, so that the digest (in every record) stays the same
            # when the pins are regenerated on another machine or thread count.
            new["protocols"][pid] = before
            print(f"{pid}: unchanged")
            continue
        stale += 1
        status = f"{len(drifts)} values moved" if drifts else "values unchanged"
        print(f"{pid}: {status}{'' if same_hash else ' (protocol hash changed)'}")
        for d in drifts[:10]:
            print(f"  {d.describe()}")
    for pid in old.keys() - new["protocols"].keys():
        print(f"{pid}: no longer registered, dropped")
        stale += 1
    if args.check:
        return 1 if stale else 0
    path = numerics.PINS_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".numerics_pins.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(new, f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
