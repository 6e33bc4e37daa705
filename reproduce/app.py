"""The shared shape of every `python -m reproduce.<work>`: a Hydra app with `scale=smoke|mini|paper`.

`main(work, run)` registers the work's structured-config schema (`reproduce.schemas.<work>`) as `repro_base`,
the first entry of the work's defaults list, so OmegaConf checks every key and type while Hydra composes the
config. Hydra's own command line works as usual (`--help`, `--cfg job`, `--info`, `--multirun` sweeps,
`hydra/launcher=submitit_slurm`); `launcher=slurm` is a shortcut for the latter. Before Hydra runs, the command
line is composed once (each value of a sweep too), so a bad override, an unknown key or scale and a wrong type
are one line on stderr and exit 2 instead of Hydra's multi-line report.

Each job seeds every generator, opens the tracker and a `ResultWriter` and calls `run(ctx)`. A `UserError`
raised by the work is one line and exit 2; results are committed only when `run` returns, so a failed run
leaves the previous results in place. Where things go (RESULTS is `results_dir`, `results` by default):

- a run: results in RESULTS/<work>/<scale>/, Hydra's files (`.hydra/`, `<work>.log`) in
  RESULTS/runs/<work>/<date>_<time>/ (kept when the run fails: the log says why);
- a `--multirun` sweep: one folder per job, RESULTS/multirun/<work>/<date>_<time>/<job number>/, holding that
  job's results in <scale>/ beside its `.hydra/` and `<work>.log` (nothing of another job is overwritten).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.distributed import DistEnv, detect_env
from common.errors import EXIT_USER_ERROR, UserError, one_line
from common.results import ResultWriter
from common.tracking import Tracker

CONF_ROOT = Path(__file__).parent / "conf"
MAX_CHECKED_SWEEP_VALUES = 64  # values of one swept key composed up front (each is checked by its own job too)

log = logging.getLogger("reproduce")


def register_schema(work: str, schema: type | None = None) -> type:
    """Store the work's schema (a dataclass) as `repro_base` in Hydra's ConfigStore; returns it."""
    from hydra.core.config_store import ConfigStore

    from reproduce.schemas import schema_for

    schema = schema or schema_for(work)
    ConfigStore.instance().store(name="repro_base", node=schema)
    return schema


def _register_base(work: str | None = None) -> None:
    """Register `repro_base` for composing a work's config outside `main` (tests); `work` picks its schema,
    without it only the shared keys are known and the work's own keys are not checked."""
    from hydra.core.config_store import ConfigStore

    from reproduce.schemas.base import BaseConfig

    if work is not None:
        register_schema(work)
        return
    from omegaconf import OmegaConf

    base = OmegaConf.structured(BaseConfig)
    ConfigStore.instance().store(name="repro_base", node=OmegaConf.to_container(base))


@dataclass
class RunContext:
    """What a work's `run` receives."""

    work: str
    scale: str
    cfg: Any  # the resolved omegaconf DictConfig
    out: ResultWriter
    tracker: Tracker
    env: DistEnv  # this process's place in a multi-process job (torchrun / SLURM), rank 0 of 1 otherwise
    started: float = field(default_factory=time.time)

    @property
    def dry_run(self) -> bool:
        return bool(self.cfg.dry_run)


def fail(message: str) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


# ------------------------------------------------------------------------------------------ the command line
def _describe(exc: BaseException) -> str:
    """One line for a composition error: Hydra's message and OmegaConf's reason (with the key), if any."""
    from omegaconf.errors import OmegaConfBaseException

    parts, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OmegaConfBaseException) and getattr(e, "msg", None):
            key, msg = getattr(e, "full_key", None), str(e.msg).split("\n")[0]  # not OmegaConf's type lines
            parts.append(f"{key}: {msg}" if key else msg)
        else:
            text = str(e).split("\nTo append", 1)[0]  # Hydra suggests '+key=value'; the schema forbids new keys
            parts.append(text)
        e = e.__cause__
    return one_line(Exception(": ".join(p.strip().rstrip(".") for p in parts if p.strip())))


def _sweep_values(o: Any) -> list[str]:
    """The values of a sweep override (`a,b`, `range(...)`, `choice(...)`); [] for one Hydra expands itself
    (`glob(...)`), which its jobs then check."""
    try:
        return list(o.sweep_string_iterator())[:MAX_CHECKED_SWEEP_VALUES]
    except Exception:  # noqa: BLE001 - Hydra raises for sweeps it cannot enumerate here
        return []


def _scales(conf_dir: Path) -> list[str]:
    return sorted(p.stem for p in (conf_dir / "scale").glob("*.yaml"))


def check_command_line(work: str, overrides: list[str], conf_dir: Path, multirun: bool = False) -> Any:
    """Compose the config the way Hydra will (a sweep: once per swept value) without running anything.

    Returns the config of the first job; any problem is one line on stderr and exit 2."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors are a bad command line
        fail(f"bad command line for reproduce.{work}: {_describe(exc)}")
    scales = _scales(conf_dir)
    fixed, swept = [], []
    for o in parsed:
        if o.get_key_element() == "scale" and o.value_type is not None:
            values = _sweep_values(o) if o.is_sweep_override() else [o.get_value_element_as_str()]
            for v in values:
                if v not in scales:
                    fail(f"unknown scale {v!r} for {work}; choose one of {', '.join(scales)}")
        (swept if multirun and o.is_sweep_override() else fixed).append(o)
    variants = [[o.input_line for o in fixed]]
    for o in swept:
        head = [x.input_line for x in fixed]
        key = o.get_key_element()
        variants += [[*head, f"{key}={v}"] for v in _sweep_values(o)]
    first = None
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            for ov in variants:
                cfg = hydra.compose_config("config", ov, run_mode=RunMode.RUN, from_shell=True)
                with open_dict(cfg):
                    del cfg["hydra"]
                OmegaConf.resolve(cfg)
                if extra := added_keys(cfg):
                    fail(
                        f"bad command line for reproduce.{work}: unknown key {', '.join(extra)} "
                        f"(not in {OmegaConf.get_type(cfg).__name__}, reproduce/schemas)"
                    )
                first = first or cfg
    except Exception as exc:  # noqa: BLE001 - Hydra and OmegaConf raise many types; each is a bad command line
        fail(f"bad command line for reproduce.{work}: {_describe(exc)}")
    finally:
        GlobalHydra.instance().clear()
    return first


def added_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Keys a `+key=value` override added to a node the schema types as a dataclass (Hydra opens the config
    for `+`, so OmegaConf lets them in; the schema has no place for them)."""
    import dataclasses

    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: list[str] = []
    if isinstance(cfg, DictConfig):
        typ = OmegaConf.get_type(cfg)
        known = {f.name for f in dataclasses.fields(typ)} if dataclasses.is_dataclass(typ) else None
        for k in cfg.keys():
            if known is not None and k not in known:
                out.append(f"{prefix}{k}")
            else:
                out += added_keys(cfg._get_node(k), f"{prefix}{k}.")
    elif isinstance(cfg, ListConfig):
        for i in range(len(cfg)):
            out += added_keys(cfg._get_node(i), f"{prefix}{i}.")
    return out


def _has_sweep(overrides: list[str]) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))


def hydra_defaults(work: str) -> list[str]:
    """Overrides put before the user's (which win): Hydra's folders under the results folder, the log named
    after the work."""
    stamp = "${now:%Y-%m-%d_%H-%M-%S}"
    return [
        f"hydra.job.name={work}",
        f"hydra.run.dir=${{results_dir}}/runs/{work}/{stamp}",
        f"hydra.sweep.dir=${{results_dir}}/multirun/{work}/{stamp}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]


def slurm_argv(cfg: Any, argv: list[str], overrides: list[str]) -> list[str]:
    """The Hydra command line that submits this run through the submitit SLURM launcher."""
    import importlib.util

    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        fail("launcher=slurm needs the slurm extra: pip install -e '.[slurm]'")
    s = cfg.slurm
    settings = {
        "nodes": s.nodes,
        "tasks_per_node": s.tasks_per_node,
        "timeout_min": s.timeout_min,
        "partition": s.partition,
        "gpus_per_node": s.gpus_per_node or None,
        "cpus_per_task": s.cpus_per_task,
        "mem_gb": s.mem_gb,
    }
    extra = [f"hydra.launcher.{k}={v}" for k, v in settings.items() if v is not None]
    if s.setup:
        extra.append("hydra.launcher.setup=[" + ",".join(f"'{c}'" for c in s.setup) + "]")
    if cfg.per_job_results is None and not _has_sweep(overrides):
        extra.append("per_job_results=false")  # one job: its results land where a local run's would
    rest = [a for a in argv if a not in ("-m", "--multirun")]
    return ["--multirun", "hydra/launcher=submitit_slurm", *extra, *rest]


# ------------------------------------------------------------------------------------------------- one job
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hydra_job() -> Any | None:
    """Hydra's view of this job (None outside a Hydra app, e.g. `execute` called from a test)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:  # noqa: BLE001 - not inside a Hydra app
        return None


def original_cwd() -> Path:
    """Where the command was started (a SLURM job may run elsewhere); relative result paths start there."""
    hc = _hydra_job()
    return Path(hc.runtime.cwd) if hc is not None else Path.cwd()


def output_dir(work: str, scale: str, cfg: Any) -> tuple[Path, str | None]:
    """Where this job's results go, and its job number when it is one job of a sweep."""
    from hydra.types import RunMode

    hc = _hydra_job()
    multirun = hc is not None and hc.mode == RunMode.MULTIRUN
    per_job = multirun if cfg.per_job_results is None else bool(cfg.per_job_results)
    if per_job and hc is not None:
        return Path(hc.runtime.output_dir) / scale, str(hc.job.num)
    return original_cwd() / Path(cfg.results_dir) / work / scale, None


def check_writable(path: Path, key: str) -> None:
    """A UserError unless `path` is a folder this process can create and write in: the missing folders are made
    and removed again (asking the file system is the only test that holds for root and read-only mounts)."""
    path = Path(os.path.abspath(path))
    made = []
    try:
        for p in [*reversed(path.parents), path]:
            if not p.exists():
                p.mkdir()
                made.append(p)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{key}: cannot write {path} ({exc.strerror or exc})") from None
    finally:
        for p in reversed(made):
            with contextlib.suppress(OSError):
                p.rmdir()


def execute(work: str, cfg: Any, run: Callable[[RunContext], None]) -> Path | None:
    """Run one work on a composed config (what the Hydra task does; callable directly too)."""
    from omegaconf import OmegaConf

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    scale = str(cfg.scale.name)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    seed_everything(int(cfg.seed))
    env = detect_env()
    out_dir, job = output_dir(work, scale, cfg)
    if cfg.dry_run:
        print(f"# dry run of reproduce.{work} at scale={scale}: nothing is trained or written")
        print(OmegaConf.to_yaml(cfg, resolve=True))
        tracker = Tracker(mode="disabled")
    else:
        name = f"{work}-{scale}" + (f"-job{job}" if job is not None else "")
        tracker = Tracker(
            project=cfg.tracking.project,
            group=f"{work}/{scale}",
            name=name,
            config=resolved,
            mode=str(cfg.tracking.mode),
            dir=original_cwd() / cfg.tracking.dir,
            tags=[work, scale],
            rank=env.rank,
        )
    with ResultWriter(out_dir, tracker=tracker, discard=env.rank != 0) as out:
        ctx = RunContext(work=work, scale=scale, cfg=cfg, out=out, tracker=tracker, env=env)
        try:
            run(ctx)
            if cfg.dry_run or env.rank != 0:
                return None
            path = out.commit(resolved, title=f"reproduce.{work} at scale={scale}", work=work, scale=scale)
            log.info("results written to %s", path)
            return path
        finally:
            tracker.finish()


def main(
    work: str, run: Callable[[RunContext], None], conf_dir: Path | None = None, schema: type | None = None
) -> None:
    """Entry point of `python -m reproduce.<work>`; `schema` defaults to `reproduce.schemas.<work>`'s."""
    import hydra
    from hydra._internal.utils import get_args_parser

    conf_dir = Path(conf_dir or CONF_ROOT / work).resolve()
    register_schema(work, schema)
    argv = sys.argv[1:]
    args, _ = get_args_parser().parse_known_intermixed_args(argv)
    informational = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
    cfg = check_command_line(work, list(args.overrides), conf_dir, multirun=bool(args.multirun))
    if not informational and not cfg.dry_run:  # Hydra makes its run folder under results_dir before any job
        try:
            check_writable(Path(cfg.results_dir), "results_dir")
            check_writable(Path(cfg.tracking.dir), "tracking.dir")
        except UserError as exc:
            fail(one_line(exc))
    extra = hydra_defaults(work)
    tmp_run_dir = None
    if cfg.launcher == "slurm" and not informational:
        argv = slurm_argv(cfg, argv, list(args.overrides))
        args, _ = get_args_parser().parse_known_intermixed_args(argv)
    elif cfg.dry_run and not args.multirun and not informational:
        # a dry run writes nothing: Hydra's run folder is a temporary one, removed afterwards
        tmp_run_dir = tempfile.mkdtemp(prefix=f"{work}-dry-run-")
        extra += [f"hydra.run.dir={tmp_run_dir}", "hydra.output_subdir=null"]
    # flags first, then overrides: ours before the user's so that theirs win (argparse wants them together)
    overrides = list(args.overrides)
    flags = list(argv)
    for o in overrides:
        flags.remove(o)
    sys.argv = [sys.argv[0], *flags, *extra, *overrides]

    @hydra.main(version_base="1.3", config_path=str(conf_dir), config_name="config")
    def _task(cfg) -> None:
        try:
            execute(work, cfg, run)
        except UserError as exc:
            fail(one_line(exc))

    try:
        _task()
    finally:
        if tmp_run_dir is not None:
            shutil.rmtree(tmp_run_dir, ignore_errors=True)
