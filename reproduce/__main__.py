"""`python -m reproduce [WORK ...] [OVERRIDES ...]`: run the implemented works (all by default) at `mini`.

`python -m reproduce --list` lists the works and which are implemented. Overrides (key=value) are passed to
every work; each work runs as its own process, so one failing does not stop the others from running. At the
end it prints one table of every work's claims (read from results/<work>/<scale>/claims.json, also written to
results/claims_<scale>.md); a work that wrote none shows as "no claims report".
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from . import WORKS, implemented
from .app import fail

NO_REPORT = "no claims report"


def _value(overrides: list[str], key: str, default: str) -> str:
    """The last `key=value` among the overrides (what Hydra would use), else the default."""
    values = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return values[-1] if values else default


def claims_summary(works: list[str], results_dir: Path, scale: str, failed: dict[str, int]):
    """One row per claim of every work (pandas DataFrame), from each work's claims.json; a work that failed or
    wrote no report is one row saying so."""
    import pandas as pd

    from common.claims import read_claims, summary_table

    frames = []
    for w in works:
        path = results_dir / w / scale / "claims.json"
        if w in failed:
            verdict = f"run failed (exit {failed[w]}); claims not read"
        elif path.exists():
            frames.append(summary_table([(w, scale, read_claims(path))]))
            continue
        else:
            verdict = NO_REPORT
        frames.append(pd.DataFrame([{"work": w, "scale": scale, "claim": "-", "verdict": verdict}]))
    return pd.concat(frames, ignore_index=True)


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
    failed: dict[str, int] = {}
    started = time.time()
    for i, w in enumerate(works, 1):
        print(f"=== [{i}/{len(works)}] reproduce.{w} {' '.join(overrides)}", flush=True)
        start = time.time()
        rc = subprocess.call([sys.executable, "-m", f"reproduce.{w}", *overrides])
        print(
            f"=== [{i}/{len(works)}] reproduce.{w}: {'ok' if rc == 0 else f'exit {rc}'} in "
            f"{time.time() - start:.0f}s (total {time.time() - started:.0f}s)",
            flush=True,
        )
        if rc:
            failed[w] = rc
    sweep = any(o in ("-m", "--multirun") for o in overrides)
    dry = _value(overrides, "dry_run", "false").lower() == "true"
    if not sweep and not dry:
        from common.results import atomic_write_text, to_markdown

        scale = _value(overrides, "scale", "mini")
        results_dir = Path(_value(overrides, "results_dir", "results"))
        table = to_markdown(claims_summary(works, results_dir, scale, failed))
        print(f"\n## Claims at scale={scale}\n\n{table}", flush=True)
        atomic_write_text(results_dir / f"claims_{scale}.md", f"# Claims at scale={scale}\n\n{table}")
    if failed:
        print("failed: " + ", ".join(f"{w} (exit {rc})" for w, rc in failed.items()), file=sys.stderr)
        return 2 if all(rc == 2 for rc in failed.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
