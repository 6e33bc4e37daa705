"""Process groups from torchrun, SLURM or explicit arguments, with a timeout so that a dead or missing rank
fails the job instead of hanging it; and `run_processes`, which runs a function on N real processes.

Backend: NCCL when CUDA is available, gloo otherwise (override with `backend=`).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import pickle
import re
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job and how to reach rank 0."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun", "slurm", "explicit" or "single"


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list such as 'gpu[01-03,7],cpu5' into host names, in order."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-")
                for i in range(int(lo), int(hi) + 1):
                    hosts.append(f"{prefix}{str(i).zfill(len(lo))}{suffix}")
            else:
                hosts.append(f"{prefix}{r}{suffix}")
    return hosts


def env_from_torchrun(environ: Mapping[str, str] = os.environ) -> DistEnv | None:
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    return DistEnv(
        rank=int(environ["RANK"]),
        world_size=int(environ["WORLD_SIZE"]),
        local_rank=int(environ.get("LOCAL_RANK", 0)),
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(environ.get("MASTER_PORT", 29500)),
        source="torchrun",
    )


def env_from_slurm(environ: Mapping[str, str] = os.environ) -> DistEnv | None:
    """Rank and world size from SLURM_PROCID / SLURM_NTASKS; rank 0's host is the first of the job's nodes."""
    if "SLURM_PROCID" not in environ or "SLURM_NTASKS" not in environ:
        return None
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "127.0.0.1"
    hosts = expand_nodelist(nodelist)
    if "MASTER_PORT" in environ:
        port = int(environ["MASTER_PORT"])
    else:
        port = 20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000
    return DistEnv(
        rank=int(environ["SLURM_PROCID"]),
        world_size=int(environ["SLURM_NTASKS"]),
        local_rank=int(environ.get("SLURM_LOCALID", 0)),
        master_addr=environ.get("MASTER_ADDR", hosts[0] if hosts else "127.0.0.1"),
        master_port=port,
        source="slurm",
    )


def detect_env(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """torchrun's variables win over SLURM's (torchrun inside an allocation); one process otherwise."""
    found = env_from_torchrun(environ) or env_from_slurm(environ)
    return found or DistEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(
    rank: int | None = None,
    world_size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] = os.environ,
) -> DistEnv:
    """Join (or create) the default process group.

    Explicit arguments win; otherwise torchrun's variables, then SLURM's. Every collective and the
    rendezvous itself fail after `timeout_s` instead of waiting forever for a rank that is gone.
    """
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise UserError("give both rank and world_size, or neither")
        env = DistEnv(rank, world_size, rank, master_addr or "127.0.0.1", int(master_port or 29500), "explicit")
    else:
        env = detect_env(environ)
        if master_addr or master_port:
            env = DistEnv(
                env.rank,
                env.world_size,
                env.local_rank,
                master_addr or env.master_addr,
                int(master_port or env.master_port),
                env.source,
            )
    if not 0 <= env.rank < env.world_size:
        raise UserError(f"rank {env.rank} is outside world size {env.world_size}")
    if timeout_s <= 0:
        raise UserError(f"timeout must be positive, got {timeout_s}")
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank % max(torch.cuda.device_count(), 1))
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if dist.is_initialized():
        return env
    init_method = f"tcp://{env.master_addr}:{env.master_port}"
    try:
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            rank=env.rank,
            world_size=env.world_size,
            timeout=_dt.timedelta(seconds=timeout_s),
        )
    except (RuntimeError, dist.DistStoreError) as exc:  # type: ignore[attr-defined]
        raise RuntimeError(
            f"rank {env.rank}/{env.world_size} could not form the process group at {init_method} "
            f"within {timeout_s:.0f}s ({env.source}): {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc
    return env


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


# ---------------------------------------------------------------------------------------------------------
# Running a function on N real processes


class ProcessFailed(RuntimeError):
    """A rank died without reporting (killed, segfault, os._exit) or the job overran its timeout."""


def _child(fn, rank_, world_size_, args, kwargs, port, backend, group_timeout_s, threads, out_dir, init_group):
    os.environ.update(
        {
            "RANK": str(rank_),
            "WORLD_SIZE": str(world_size_),
            "LOCAL_RANK": str(rank_),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(threads)
    out = Path(out_dir) / f"rank{rank_}.pkl"
    try:
        if init_group:
            init_process_group(rank_, world_size_, "127.0.0.1", port, backend, group_timeout_s)
        result = ("ok", fn(rank_, world_size_, *args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which re-raises it
        tb = traceback.format_exc()
        try:
            pickle.dumps(exc)
            payload = exc
        except Exception:  # noqa: BLE001
            payload = RuntimeError(f"{type(exc).__name__}: {exc}")
        result = ("err", (payload, tb))
    finally:
        if init_group:
            try:
                destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
    if result[0] == "err":
        out.with_suffix(".err").touch()
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, out)


def run_processes(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    timeout_s: float = 120.0,
    backend: str = "gloo",
    group_timeout_s: float | None = None,
    threads_per_process: int = 1,
    init_group: bool = True,
    grace_s: float = 10.0,
) -> list[Any]:
    """Run `fn(rank, world_size, *args, **kwargs)` on `world_size` spawned processes and return their results.

    Each process joins a fresh process group (unless `init_group=False`). An exception on any rank is
    re-raised here with the rank's traceback attached; once one rank fails the others get `grace_s`
    to finish before they are killed. A job still running after `timeout_s` is killed and reported.
    `fn` must be importable (defined at module level).
    """
    if world_size < 1:
        raise UserError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    port = free_port()
    group_timeout_s = group_timeout_s or max(timeout_s, 1.0)
    with tempfile.TemporaryDirectory(prefix="run_processes_") as out_dir:
        procs = []
        for r in range(world_size):
            p = ctx.Process(
                target=_child,
                args=(
                    fn,
                    r,
                    world_size,
                    tuple(args),
                    dict(kwargs or {}),
                    port,
                    backend,
                    group_timeout_s,
                    threads_per_process,
                    out_dir,
                    init_group,
                ),
                daemon=False,
            )
            p.start()
            procs.append(p)
        start = time.monotonic()
        deadline = start + timeout_s
        failed_at: float | None = None
        try:
            while True:
                alive = [p for p in procs if p.is_alive()]
                if not alive:
                    break
                now = time.monotonic()
                if failed_at is None and any(
                    (Path(out_dir) / f"rank{r}.err").exists() or (p.exitcode not in (None, 0))
                    for r, p in enumerate(procs)
                ):
                    failed_at = now
                if now > deadline or (failed_at is not None and now > failed_at + grace_s):
                    break
                time.sleep(0.02)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(5)
        results: list[Any] = [None] * world_size
        errors: list[tuple[int, BaseException, str]] = []
        missing: list[str] = []
        for r, p in enumerate(procs):
            path = Path(out_dir) / f"rank{r}.pkl"
            if not path.exists():
                why = f"exit code {p.exitcode}" if p.exitcode not in (None, -9) else "killed while still running"
                missing.append(f"rank {r} ({why})")
                continue
            with open(path, "rb") as f:
                status, value = pickle.load(f)
            if status == "ok":
                results[r] = value
            else:
                errors.append((r, value[0], value[1]))
        if errors:
            r, exc, tb = errors[0]
            others = f"; also failed: ranks {[e[0] for e in errors[1:]]}" if len(errors) > 1 else ""
            if hasattr(exc, "add_note"):
                exc.add_note(f"raised on rank {r} of {world_size}{others}:\n{tb}")
            raise exc
        if missing:
            elapsed = time.monotonic() - start
            raise ProcessFailed(f"no result from {', '.join(missing)} after {elapsed:.1f}s (timeout {timeout_s}s)")
        return results
