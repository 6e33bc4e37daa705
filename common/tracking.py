"""One small tracking interface: Weights & Biases (offline by default, online when asked) or the console.

Only rank 0 logs. `mode`: "offline" (default; sync later with `wandb sync <dir>`), "online", "disabled"
(W&B off, console only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError

log = logging.getLogger("tracking")

MODES = ("offline", "online", "disabled")


class Tracker:
    def __init__(
        self,
        project: str = "mlsys-repro",
        group: str | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: str = "offline",
        dir: str | os.PathLike = ".",
        rank: int = 0,
        tags: list[str] | None = None,
    ):
        if mode not in MODES:
            raise UserError(f"unknown tracking mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        self.run = None
        if rank != 0 or mode == "disabled":
            return
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            group=group,
            name=name,
            config=dict(config or {}),
            mode=mode,
            dir=str(dir),
            tags=tags,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    @property
    def run_dir(self) -> Path | None:
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics now (each call is one history row sent to W&B's service at once, so curves show while
        training runs); `step` is logged as the metric `step` (the x-axis of the charts), not as W&B's own
        step counter, so several curves (and the tables and figures logged between them) never collide."""
        if self.run is not None:
            self.run.log(dict(metrics) if step is None else {**metrics, "step": step})
        else:
            log.info(
                "step %s: %s",
                step,
                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
            )

    def log_table(self, name: str, df) -> None:
        if self.run is not None:
            import wandb

            # a W&B Table column holds one type: mixed object columns (numbers and text) go as text
            df = df.copy()
            for col in df.select_dtypes(include="object").columns:
                if len({type(v) for v in df[col].dropna()}) > 1:
                    df[col] = df[col].map(lambda v: None if v is None or v != v else str(v))
            self.run.log({f"tables/{name}": wandb.Table(dataframe=df.astype(object).where(df.notna(), None))})

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        if self.run is not None:
            import wandb

            self.run.log({f"figures/{name}": wandb.Image(str(path))})

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(values))

    def finish(self) -> None:
        """End the run and return only once W&B holds all of it (the offline `.wandb` file is complete and
        closed; online, everything is uploaded).

        `run.finish()` alone does not wait for that: it tells wandb's service process that the run is over
        (`inform_finish` is a publish, not a request), and the service flushes and closes the run's file in
        the background; read right after, the file often held only its 7-byte header. `wandb.teardown()` asks
        the service to shut down and waits for its process to exit, which it does only after closing every
        run. Waiting here, not in an atexit hook, also keeps a run's last metrics when the process ends
        without running atexit hooks (a multiprocessing child, `os._exit`, a SLURM task killed at the end).
        """
        if self.run is not None:
            import wandb

            self.run.finish()
            self.run = None
            wandb.teardown()


def _wandb_records(path: Path):
    """The protobuf records of an offline `.wandb` file (W&B's header, then LevelDB-log framing)."""
    import struct

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield payload
        elif kind == 2:
            buf = payload
        elif kind == 3:
            buf += payload
        elif kind == 4:
            yield buf + payload


def read_offline_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read an offline W&B run back: its group, config, history rows and logged tables (as DataFrames)."""
    import json

    import pandas as pd
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    (run_file,) = run_dir.glob("run-*.wandb")
    out: dict[str, Any] = {"group": None, "config": {}, "history": [], "tables": {}}
    for raw in _wandb_records(run_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["group"] = rec.run.run_group
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    for f in sorted((run_dir / "files" / "media" / "table").rglob("*.table.json")):
        name = f.name.split(".table.json")[0].rsplit("_", 2)[0]
        t = json.loads(f.read_text())
        out["tables"][name] = pd.DataFrame(t["data"], columns=t["columns"])
    return out
