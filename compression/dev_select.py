"""`python -m compression.dev_select OUT.json`: the auto-encoder's learning-rate scale (ae50, lr_scale 1, 3 or 10)
selected on Rotten Tomatoes' validation split (dev) under TP2 at the mini budget, seeds 0-2; each setting's test
accuracy is recorded beside and never used to choose. The README's ablation of the learning-based finding cites it."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from common.distributed import run_processes

from . import study
from .train import run_settings

SCALES = (1.0, 3.0, 10.0)
CONFIG = Path(__file__).resolve().parents[1] / "reproduce" / "conf" / "compression" / "config.yaml"


def main(out: str) -> dict:
    t0 = time.time()
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=True)
    raw.pop("defaults", None)
    labels = [f"ae50_lr{x:g}" for x in SCALES]
    for x, label in zip(SCALES, labels):
        raw["compressors"][label] = {"name": "autoencoder", "d": 50, "lr_scale": x, "matmul_dtype": "bfloat16"}
    raw["accuracy"].update(compressors=labels, layouts=[{"tp": 2, "pp": 1}])
    s = study.StudyConfig.parse(raw)
    rows = []
    for seed in s.seeds:
        batch = [st for st in s.settings("main") if st.cfg.seed == seed]
        configs = [replace(st.cfg, eval_dev=True) for st in batch]
        per_rank = run_processes(run_settings, 2, args=(configs,), timeout_s=3600)
        for i, st in enumerate(batch):
            r = next(p[i] for p in per_rank if p[i] is not None)
            rows.append({"label": st.label, "seed": seed, "dev": r["dev_acc"], "test": r["test_acc"]})
            print(rows[-1], f"{time.time() - t0:.0f}s", flush=True)
    summary = {
        label: {
            split: [float(np.mean(v)), float(np.std(v, ddof=1))]
            for split in ("dev", "test")
            if (v := [r[split] for r in rows if r["label"] == label])
        }
        for label in labels
    }
    result = {"rows": rows, "summary": summary, "selected_on_dev": max(labels, key=lambda k: summary[k]["dev"][0])}
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(summary), "selected on dev:", result["selected_on_dev"])
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dev_select.json")
