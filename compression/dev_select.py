"""`python -m compression.dev_select [OUT.json] [--label ae50] [key=value ...]`: an auto-encoder's learning-rate scale
(the config's `--label` compressor, default ae50, at lr_scale 1, 3 or 10) selected on Rotten Tomatoes' validation split
(dev) under TP2 at the mini budget, seeds 0-2; each setting's test accuracy is recorded beside and never used to choose.
The README's ablation of the learning-based finding (ae50) and the lr of the study-ratio auto-encoder (ae20) cite it.
The config is composed as `python -m reproduce.compression` composes it (Hydra, the schema, the same overrides)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.errors import exit_on_user_error, require

from . import study

SCALES = (1.0, 3.0, 10.0)
LAYOUT = {"tp": 2, "pp": 1}


def compose(overrides: Sequence[str] = ()) -> dict:
    """The work's config with `overrides`, through Hydra and the schema (`reproduce.schemas.compression`): a bad key
    or value is one line and exit 2, as on `python -m reproduce.compression`'s command line."""
    from omegaconf import OmegaConf

    from reproduce import app

    app.register_schema("compression")
    cfg = app.check_command_line("compression", list(overrides), app.CONF_ROOT / "compression")
    return OmegaConf.to_container(cfg, resolve=True)


def plan(raw: dict, scales: Sequence[float] = SCALES, label: str = "ae50") -> list[study.Setting]:
    """The candidates: the `label` auto-encoder at each lr scale (else as configured) from `start_layer` under TP2,
    every seed, with the dev split evaluated too."""
    raw = {**raw, "compressors": dict(raw["compressors"]), "accuracy": dict(raw["accuracy"])}
    base = raw["compressors"].get(label)
    require(
        base is not None and base.get("name") == "autoencoder",
        f"--label {label}: not an auto-encoder of the config's compressors",
    )
    labels = [f"{label}_lr{x:g}" for x in scales]
    for x, name in zip(scales, labels):
        raw["compressors"][name] = {**base, "lr_scale": x}
    raw["accuracy"].update(compressors=labels, early=[], high_ratio=[], layouts=[LAYOUT])
    s = study.StudyConfig.parse(raw)
    require(  # GLUE's dev split is the evaluation split (its test labels are hidden): nothing held out to select on
        not s.train.glue_root, "dev_select selects on Rotten Tomatoes' dev split; unset accuracy.glue_root"
    )
    return [replace(st, cfg=replace(st.cfg, eval_dev=True)) for st in s.settings("main")]


def select(rows: list[dict]) -> dict:
    """Mean and sample std per label on dev and test; the label with the best dev mean (test chooses nothing)."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    summary = {
        label: {
            split: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0]
            for split in ("dev", "test")
            if (v := [r[split] for r in rows if r["label"] == label])
        }
        for label in labels
    }
    return {"rows": rows, "summary": summary, "selected_on_dev": max(labels, key=lambda k: summary[k]["dev"][0])}


@exit_on_user_error
def main(out: str = "dev_select.json", overrides: Sequence[str] = (), label: str = "ae50") -> dict:
    t0 = time.time()
    settings = plan(compose(overrides), label=label)
    runs = study.run_accuracy(settings)  # Rotten Tomatoes: acc is the test split's, dev_acc the dev split's
    rows = [
        {"label": r.compressor, "seed": int(r.seed), "dev": float(r.dev_acc), "test": float(r.acc)}
        for r in runs.itertuples()
    ]
    result = select(rows)
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"]), "selected on dev:", result["selected_on_dev"], f"{time.time() - t0:.0f}s")
    return result


def cli(argv: Sequence[str] | None = None) -> tuple[str, list[str], str]:
    """(OUT.json, Hydra overrides, --label) from the command line; the overrides are checked by Hydra in `compose`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m compression.dev_select", description=__doc__.split("\n")[0])
    p.add_argument("args", nargs="*", metavar="[OUT.json] [key=value ...]", help="the result file, then overrides")
    p.add_argument("--label", default="ae50", help="the config's auto-encoder to tune (default ae50)")
    a = p.parse_intermixed_args(argv)
    out = a.args.pop(0) if a.args and "=" not in a.args[0] else "dev_select.json"
    return out, a.args, a.label


if __name__ == "__main__":
    main(*cli())
