"""Results a reproduction writes: tables (markdown, CSV, LaTeX), figures (PNG) and `provenance.json`.

Everything is atomic. `ResultWriter` stages a whole result directory under a temporary name and renames it
into place when the run finishes, so `results/<work>/<scale>/` is either the complete new result or the
previous one, never a mix or a half-written file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

PAPER_SUFFIX = " (paper)"
TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "crypten",
    "transformers",
    "hydra-core",
    "wandb",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "mlsys-repro",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    def esc(s: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            s = s.replace(a, b)
        return s

    cols = [esc(str(c)) for c in df.columns]
    body = [" & ".join(esc(_fmt(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    out = [r"\begin{table}[t]", r"\centering"]
    if caption:
        out.append(rf"\caption{{{esc(caption)}}}")
    out += [
        rf"\begin{{tabular}}{{{'l' * len(cols)}}}",
        r"\toprule",
        " & ".join(cols) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(out) + "\n"


def beside_paper(
    measured: pd.DataFrame, paper: pd.DataFrame, on: str | Sequence[str], columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Measured table with the paper's published values next to it, each paper column labelled '(paper)'.

    `paper` holds the key column(s) `on` and published values under the same names as the measured columns;
    each published column is placed right after its measured twin. Rows the paper lacks get '-'.
    """
    keys = [on] if isinstance(on, str) else list(on)
    columns = list(columns or [c for c in paper.columns if c not in keys])
    renamed = paper[keys + columns].rename(columns={c: c + PAPER_SUFFIX for c in columns})
    merged = measured.merge(renamed, on=keys, how="left")
    order: list[str] = []
    for c in measured.columns:
        order.append(c)
        if c in columns:
            order.append(c + PAPER_SUFFIX)
    order += [c + PAPER_SUFFIX for c in columns if c not in measured.columns]
    return merged[order]


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
        commit = out.stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: Sequence[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def provenance(config: Mapping[str, Any], wall_time_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "config": config,
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_time_s, 3),
        **extra,
    }


class ResultWriter:
    """Collects one run's results in a staging directory; `commit()` renames it onto `out_dir`.

    Use as a context manager: on an exception the staging directory is removed and `out_dir` keeps
    whatever an earlier run left there.
    """

    def __init__(self, out_dir: str | os.PathLike, tracker: Any | None = None, discard: bool = False):
        """`discard=True` (a rank other than 0 of a multi-process job): the results are staged in the system's
        temporary folder, never beside `out_dir`, and cannot be committed, so that only rank 0 touches the
        results folder (another rank's clean-up could otherwise remove the work's folder under rank 0)."""
        self.out_dir = Path(out_dir)
        self.discard = discard
        self._stage: Path | None = None
        self.tracker = tracker
        self.started = time.time()
        self._md: list[str] = []
        self.committed = False

    @property
    def stage(self) -> Path:
        """The staging directory, created on first use (a run that writes nothing leaves nothing)."""
        if self._stage is None:
            self._stage = self._make_stage()
        return self._stage

    def _make_stage(self) -> Path:
        if self.discard:
            return Path(tempfile.mkdtemp(prefix=f"{self.out_dir.name}.discarded-"))
        for _ in range(3):  # a concurrent job's `abort` may remove the empty work folder between the two calls
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                return Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.partial-", dir=self.out_dir.parent))
        raise FileNotFoundError(f"could not create a staging folder in {self.out_dir.parent}")

    # tables -------------------------------------------------------------------------------------------
    def table(self, name: str, df: pd.DataFrame, title: str | None = None, note: str | None = None) -> Path:
        """Write `name.csv` and `name.tex` and add the table to `tables.md`."""
        title = title or name
        df.to_csv(self.stage / f"{name}.csv", index=False)
        (self.stage / f"{name}.tex").write_text(to_latex(df, title))
        section = f"## {title}\n\n" + to_markdown(df)
        if note:
            section += f"\n{note.strip()}\n"
        self._md.append(section)
        if self.tracker is not None:
            self.tracker.log_table(name, df)
        return self.stage / f"{name}.csv"

    def text(self, name: str, content: str) -> Path:
        path = self.stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return path

    def note(self, markdown: str) -> None:
        """A paragraph in tables.md (findings, what a column means)."""
        self._md.append(markdown.strip() + "\n")

    def json(self, name: str, obj: Any) -> Path:
        return self.text(name, json.dumps(obj, indent=2, default=str) + "\n")

    # figures ------------------------------------------------------------------------------------------
    def figure(self, name: str, fig: Any, dpi: int = 120) -> Path:
        """Save a matplotlib figure as figures/<name>.png and close it."""
        import matplotlib.pyplot as plt

        path = self.stage / "figures" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        if self.tracker is not None:
            self.tracker.log_image(name, path)
        return path

    def path(self, relative: str) -> Path:
        """A path inside the staging directory for files written by other code (e.g. image grids)."""
        p = self.stage / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # finishing ----------------------------------------------------------------------------------------
    def commit(self, config: Mapping[str, Any], title: str = "", **extra: Any) -> Path:
        """Write tables.md and provenance.json, then swap the staging directory into place."""
        if self.discard:
            raise RuntimeError("a discarding ResultWriter (a rank other than 0) cannot commit")
        header = f"# {title}\n\n" if title else ""
        (self.stage / "tables.md").write_text(header + "\n".join(self._md))
        prov = provenance(config, time.time() - self.started, **extra)
        (self.stage / "provenance.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
        old = None
        if self.out_dir.exists():
            old = self.out_dir.with_name(f".{self.out_dir.name}.old-{os.getpid()}")
            os.replace(self.out_dir, old)
        os.replace(self.stage, self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.out_dir

    def abort(self) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            if self.discard:
                return
            with contextlib.suppress(OSError):  # the work's folder, if this run created it and left it empty
                self.out_dir.parent.rmdir()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()
