"""One small tracking interface: Weights & Biases (offline by default, online when asked) or the console.

Only rank 0 logs. `mode`: "offline" (default; sync later with `wandb sync <dir>`), "online", "disabled"
(W&B off, console only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

log = logging.getLogger("tracking")

MODES = ("offline", "online", "disabled")


class Tracker:
    def __init__(self, project: str = "mlsys-repro", group: str | None = None, name: str | None = None,
                 config: Mapping[str, Any] | None = None, mode: str = "offline", dir: str | os.PathLike = ".",
                 rank: int = 0, tags: list[str] | None = None):
        if mode not in MODES:
            raise UserError(f"unknown tracking mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        self.run = None
        if rank != 0 or mode == "disabled":
            return
        import wandb

        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, group=group, name=name, config=dict(config or {}), mode=mode,
                              dir=str(dir), tags=tags, reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off"))

    @property
    def run_dir(self) -> Path | None:
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)
        else:
            log.info("step %s: %s", step, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in metrics.items()))

    def log_table(self, name: str, df) -> None:
        if self.run is not None:
            import wandb

            self.run.log({f"tables/{name}": wandb.Table(dataframe=df.astype(object).where(df.notna(), None))})

    def log_image(self, name: str, path: str | os.PathLike) -> None:
        if self.run is not None:
            import wandb

            self.run.log({f"figures/{name}": wandb.Image(str(path))})

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(dict(values))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
