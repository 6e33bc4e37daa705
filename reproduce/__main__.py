"""`python -m reproduce [WORK ...] [OVERRIDES ...]`: run the implemented works (all by default) at `mini`.

`python -m reproduce --list` lists the works and which are implemented. Overrides (key=value) are passed to
every work; each work runs as its own process, so one failing does not stop the others from running.
"""

from __future__ import annotations

import subprocess
import sys
import time

from . import WORKS, implemented
from .app import fail


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv and argv[0] == "--list":
        for w, desc in WORKS.items():
            print(f"{w:12s} {'implemented' if implemented(w) else 'not yet':12s} {desc}")
        return 0
    works = [a for a in argv if "=" not in a and not a.startswith("-")]
    overrides = [a for a in argv if a not in works]
    for w in works:
        if w not in WORKS:
            fail(f"unknown work {w!r}; choose from {', '.join(WORKS)}")
        if not implemented(w):
            fail(f"work {w!r} is not implemented yet")
    works = works or [w for w in WORKS if implemented(w)]
    if not works:
        fail("no work is implemented yet")
    if not any(o.startswith("scale=") for o in overrides):
        overrides = ["scale=mini", *overrides]
    failed = []
    for w in works:
        print(f"=== reproduce.{w} {' '.join(overrides)}", flush=True)
        start = time.time()
        rc = subprocess.call([sys.executable, "-m", f"reproduce.{w}", *overrides])
        print(f"=== reproduce.{w}: {'ok' if rc == 0 else f'exit {rc}'} in {time.time() - start:.0f}s", flush=True)
        if rc:
            failed.append((w, rc))
    if failed:
        print("failed: " + ", ".join(f"{w} (exit {rc})" for w, rc in failed), file=sys.stderr)
        return 2 if all(rc == 2 for _, rc in failed) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
