"""Regenerate ``bench/numerics_pins.json``, the reference numerics of every registered protocol (bench/numerics.py).

    python scripts/numerics_pins.py            # rewrite the pins of every protocol, print what moved
    python scripts/numerics_pins.py --check    # only report what moved (exit 1 if anything did)

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
    moved = 0
    for pid, entry in new["protocols"].items():
        before = old.get(pid)
        if before is None:
            print(f"{pid}: new ({len(entry['values'])} values)")
            continue
        drifts = numerics.compare(pid, before.get("values", {}), entry["values"])
        same_hash = before.get("sha256") == entry["sha256"]
        moved += len(drifts)
        status = "unchanged" if not drifts else f"{len(drifts)} values moved"
        print(f"{pid}: {status}{'' if same_hash else ' (protocol hash changed)'}")
        for d in drifts[:10]:
            print(f"  {d.describe()}")
    for pid in old.keys() - new["protocols"].keys():
        print(f"{pid}: no longer registered, dropped")
    if args.check:
        return 1 if moved else 0
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
