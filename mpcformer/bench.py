"""Cost under MPC: per function (GeLU vs Quad; softmax vs 2ReLU vs 2Quad) and per whole model.

One spawn of the parties runs every case, so process start-up is paid once per provider. Each case reports
each party's wall time, bytes sent and communication rounds (CrypTen's counters), and its output is revealed
to the input owner and checked against plaintext on the same (real) activations. LAN and WAN times are
estimates from the rounds and bytes through `common.links.Link`, not measurements.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from common.distributed import run_processes
from common.errors import UserError
from common.links import Link

from . import crypten_compat
from .approximations import ACTIVATIONS, NORMALISERS, softmax
from .private_inference import (
    INPUT_OWNER,
    MODEL_OWNER,
    PARTIES,
    BertSpec,
    build_mpc_bert,
    export_weights,
    weight_shapes,
)

FUNCTIONS = {
    "gelu": "activation",
    "quad": "activation",
    "softmax": "attention",
    "2relu": "attention",
    "2quad": "attention",
}
LAN = Link.from_gbps(10.0, 0.1e-3, "LAN 10 Gbps, 0.1 ms")
WAN = Link.from_gbps(0.1, 40e-3, "WAN 100 Mbps, 40 ms")


def plaintext_function(name: str, x: torch.Tensor) -> torch.Tensor:
    """What the MPC output is checked against: exact GeLU (erf) and softmax; the approximations themselves."""
    if name == "gelu":
        return F.gelu(x)
    if name == "softmax":
        return softmax(x)
    return (ACTIVATIONS | NORMALISERS)[name](x)


@dataclass
class BenchJob:
    provider: str
    functions: list[tuple[str, int]]  # (function, length)
    models: list[tuple[str, int]]  # (model name, length)
    specs: dict[str, BertSpec]
    inputs_path: str  # input owner: {"fn/<name>/<L>": activations, "ids/<L>": (1, L) token ids}
    weights_paths: dict[str, str]  # model owner: model name -> weights file
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # public input shapes
    timeout_s: float = 600.0


def _measure(ct, fn):
    """Run fn() and return (output, wall seconds, rounds, bytes) for this party."""
    c = ct.comm.get()
    c.reset_communication_stats()
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    stats = c.get_communication_stats()
    return out, wall, int(stats["rounds"]), int(stats["bytes"])


def _bench_party(rank: int, nprocs: int, job: BenchJob) -> list[dict] | None:
    ct = crypten_compat.join_party(
        rank, PARTIES, f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}", job.provider, job.timeout_s
    )
    if ct is None:
        return None
    inputs = torch.load(job.inputs_path, weights_only=True) if rank == INPUT_OWNER else None
    rows: list[dict] = []
    for name, length in job.functions:
        key = f"fn/{name}/{length}"
        x_plain = inputs[key] if inputs is not None else torch.zeros(job.shapes[key])
        x = ct.cryptensor(x_plain, src=INPUT_OWNER)
        f = (ACTIVATIONS | NORMALISERS)[name]
        y, wall, rounds, nbytes = _measure(ct, lambda f=f, x=x: f(x))
        out = y.get_plain_text(dst=INPUT_OWNER)
        err = float((out - plaintext_function(name, x_plain)).abs().max()) if rank == INPUT_OWNER else float("nan")
        rows.append(
            {
                "kind": "function",
                "case": name,
                "length": length,
                "party": rank,
                "wall_s": wall,
                "rounds": rounds,
                "bytes": nbytes,
                "max_abs_error": err,
            }
        )
    built: dict[str, object] = {}
    for name, length in job.models:
        spec = job.specs[name]
        if name not in built:
            w = (
                torch.load(job.weights_paths[name], weights_only=True)
                if rank == MODEL_OWNER
                else {k: torch.zeros(s) for k, s in weight_shapes(spec).items()}
            )
            built = {name: build_mpc_bert(spec, w).encrypt(src=MODEL_OWNER).eval()}  # one model in memory
        model = built[name]
        ids = inputs[f"ids/{length}"] if inputs is not None else torch.zeros(1, length, dtype=torch.long)
        one_hot = (
            F.one_hot(ids, spec.vocab_size).float() if rank == INPUT_OWNER else torch.zeros(1, length, spec.vocab_size)
        )
        x = ct.cryptensor(one_hot, src=INPUT_OWNER)
        m = ct.cryptensor(torch.ones(1, length), src=INPUT_OWNER)
        logits, wall, rounds, nbytes = _measure(ct, lambda model=model, x=x, m=m: model(x, m))
        out = logits.get_plain_text(dst=INPUT_OWNER)
        rows.append(
            {
                "kind": "model",
                "case": name,
                "length": length,
                "party": rank,
                "wall_s": wall,
                "rounds": rounds,
                "bytes": nbytes,
                "logits": out if rank == INPUT_OWNER else None,
            }
        )
    crypten_compat.leave_party()
    return rows


def run_bench(
    functions: list[tuple[str, int]],
    models: dict[str, nn.Module],
    model_lengths: list[int],
    activations: dict[tuple[str, int], torch.Tensor],
    token_ids: dict[int, torch.Tensor],
    provider: str = "TTP",
    timeout_s: float = 600.0,
) -> pd.DataFrame:
    """Measure every (function, length) on `activations[(function, length)]` and every model at every length.

    Returns one row per case and party (wall_s, rounds, bytes; max_abs_error for functions on party 1, the
    largest logit error against the plaintext model for models).
    """
    for name, _ in functions:
        if name not in FUNCTIONS:
            raise UserError(f"unknown function {name!r}; choose from {', '.join(FUNCTIONS)}")
    model_cases = [(n, L) for n in models for L in model_lengths]
    with tempfile.TemporaryDirectory(prefix="mpcformer_bench_") as tmp:
        inputs = {f"fn/{n}/{L}": activations[(n, L)].float() for n, L in functions}
        inputs |= {f"ids/{L}": token_ids[L] for L in model_lengths}
        inputs_path = str(Path(tmp) / "inputs.pt")
        torch.save(inputs, inputs_path)
        weights_paths = {}
        for n, m in models.items():
            weights_paths[n] = str(Path(tmp) / f"weights-{n}.pt")
            torch.save(export_weights(m), weights_paths[n])
        job = BenchJob(
            provider,
            list(functions),
            model_cases,
            {n: BertSpec.of(m) for n, m in models.items()},
            inputs_path,
            weights_paths,
            {k: tuple(v.shape) for k, v in inputs.items()},
            timeout_s,
        )
        nprocs = PARTIES + (provider == "TTP")
        results = run_processes(_bench_party, nprocs, args=(job,), init_group=False, timeout_s=timeout_s, grace_s=30)
    rows = [r for rank_rows in results if rank_rows for r in rank_rows]
    for r in rows:
        if r["kind"] == "model" and r["party"] == INPUT_OWNER:
            m = models[r["case"]].eval()
            with torch.no_grad():
                ids = token_ids[r["length"]]
                plain = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            r["max_abs_error"] = float((plain - r.pop("logits")).abs().max())
        else:
            r.pop("logits", None)
    df = pd.DataFrame(rows)
    df["provider"] = provider
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, case, length, provider): wall time (slowest party), rounds and MB per party, error,
    and LAN/WAN estimates (rounds x latency + bytes / bandwidth, for the party that sends most)."""
    out = []
    for (kind, case, length, provider), g in df.groupby(["kind", "case", "length", "provider"], sort=False):
        p = {int(r.party): r for r in g.itertuples()}
        rounds = max(p[r].rounds for r in (MODEL_OWNER, INPUT_OWNER))
        nbytes = max(p[r].bytes for r in (MODEL_OWNER, INPUT_OWNER))
        wall = max(p[r].wall_s for r in (MODEL_OWNER, INPUT_OWNER))
        out.append(
            {
                "kind": kind,
                "case": case,
                "length": int(length),
                "provider": provider,
                "wall_s": wall,
                "rounds_p0": p[MODEL_OWNER].rounds,
                "rounds_p1": p[INPUT_OWNER].rounds,
                "MB_p0": p[MODEL_OWNER].bytes / 1e6,
                "MB_p1": p[INPUT_OWNER].bytes / 1e6,
                "LAN_s (est.)": LAN.time(nbytes, rounds),
                "WAN_s (est.)": WAN.time(nbytes, rounds),
                "max_abs_error": p[INPUT_OWNER].max_abs_error,
            }
        )
    return pd.DataFrame(out)


def speedups(summary: pd.DataFrame, pairs: dict[str, str], column: str = "wall_s") -> pd.DataFrame:
    """For each (fast, slow) pair of cases: slow / fast at each length and provider."""
    rows = []
    for fast, slow in pairs.items():
        a = summary[summary.case == fast].set_index(["length", "provider"])[column]
        b = summary[summary.case == slow].set_index(["length", "provider"])[column]
        for key in a.index.intersection(b.index):
            rows.append(
                {
                    "fast": fast,
                    "baseline": slow,
                    "length": key[0],
                    "provider": key[1],
                    f"speedup ({column})": float(b[key] / a[key]),
                }
            )
    return pd.DataFrame(rows)


FUNCTION_PAIRS = {"quad": "gelu", "2relu": "softmax", "2quad": "softmax"}  # (approximation, what it replaces)


def real_activations(exact: nn.Module, tokenizer, texts: list[str], lengths: list[int], layer: int):
    """Token ids of real text packed to each length, and the exact model's layer-`layer` attention scores and
    GeLU inputs on them: the activations the per-function cases run on. Returns (ids by length, activations
    by (function, length))."""
    ids_all: list[int] = []
    for t in texts:
        ids_all += tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids_all) > max(lengths):
            break
    layer = min(layer, len(exact.base_model.encoder.layer) - 1)
    mlp = exact.base_model.encoder.layer[layer].intermediate.dense
    captured = {}
    hook = mlp.register_forward_hook(lambda m, i, o: captured.__setitem__("pre", o))
    token_ids, acts = {}, {}
    try:
        for L in lengths:
            ids = torch.tensor([[tokenizer.cls_token_id] + ids_all[: L - 2] + [tokenizer.sep_token_id]])
            if ids.shape[1] != L:
                raise UserError(f"not enough text to fill a sequence of length {L}")
            token_ids[L] = ids
            with torch.no_grad():
                out = exact.eval()(input_ids=ids, output_attentions=True)
            scores, pre = out.attentions[layer], captured["pre"][0]
            acts |= {("gelu", L): pre, ("quad", L): pre} | {(f, L): scores for f in ("softmax", "2relu", "2quad")}
    finally:
        hook.remove()
    return token_ids, acts


def bench_all(
    exact: nn.Module,
    models: dict[str, nn.Module],
    tokenizer,
    texts: list[str],
    functions: list[str],
    function_lengths: list[int],
    model_lengths: list[int],
    providers: list[str],
    layer: int,
    timeout_s: float = 600.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every function at every length and every model (name -> model; `exact` included by the caller as the
    baseline "gelu+softmax") at every length, once per provider. Returns (costs summary, speedups)."""
    import logging

    if not (functions and function_lengths) and not (models and model_lengths):
        empty = pd.DataFrame(columns=["kind", "case", "length", "provider", "wall_s"])
        return empty, pd.DataFrame(columns=["fast", "baseline", "length", "provider", "speedup (wall_s)"])
    token_ids, acts = real_activations(
        exact, tokenizer, texts, sorted(set(function_lengths) | set(model_lengths)), layer
    )
    cases = [(f, L) for L in function_lengths for f in functions]
    frames = []
    for provider in providers:
        logging.getLogger(__name__).info(
            "bench with %s: %d function cases, %d model cases", provider, len(cases), len(models) * len(model_lengths)
        )
        frames.append(run_bench(cases, models, model_lengths, acts, token_ids, provider, timeout_s=timeout_s))
    costs = summarise(pd.concat(frames, ignore_index=True))
    pairs = dict(FUNCTION_PAIRS) | {m: "gelu+softmax" for m in models if m != "gelu+softmax"}
    return costs, speedups(costs, pairs)


def speedup_figure(sp):
    """Measured speedup of each approximation over what it replaces, by sequence length (a `speedups` table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (fast, slow, provider), g in sp.groupby(["fast", "baseline", "provider"]):
        g = g.sort_values("length")
        ax.plot(g["length"], g["speedup (wall_s)"], marker="o", label=f"{fast} over {slow} ({provider})")
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="sequence length",
        ylabel="speedup (wall time, measured)",
        title="MPC speedup of the approximations (CrypTen, 2 parties, loopback)",
    )
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    return fig


def with_model_speedup(accuracy, sp, bench_models, length: int, provider: str):
    """The accuracy table with a `speedup` column: each benchmarked student's whole-model speedup over the exact
    model at `length` under `provider` (NaN for students not in the bench)."""
    rows = sp[(sp.baseline == "gelu+softmax") & (sp.length == length) & (sp.provider == provider)]
    label = {a.name: a.label for a in bench_models}
    by_label = {label[r["fast"]]: r["speedup (wall_s)"] for _, r in rows.iterrows()}
    acc = accuracy.copy()
    acc.insert(1, "speedup", [by_label.get(a, float("nan")) for a in acc.approximation])
    return acc
