"""python -m reproduce.mpcformer [scale=smoke|mini|paper] [key=value ...]

MPCFormer end to end: teacher, MPC-friendly students, the two baselines and two-stage distillation; the exact model
and two students under audited MPC; CrypTen timings; the paper's claims decided from the measured tables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.claims import write_claims  # noqa: E402
from common.errors import require  # noqa: E402
from common.results import beside_paper  # noqa: E402
from mpcformer import bench as B  # noqa: E402
from mpcformer.claims import decide_claims  # noqa: E402
from mpcformer.convert import EXACT, Approximation  # noqa: E402
from mpcformer.crypten_compat import PROVIDERS  # noqa: E402
from mpcformer.data import (  # noqa: E402
    DataConfig,
    check_model_name,
    encode_splits,
    load_splits,
    load_teacher,
    majority_accuracy,
)
from mpcformer.diagnostics import diagnostics  # noqa: E402
from mpcformer.study import Budget, calibrate, checkpoint_dir, mpc_accuracy, run_study  # noqa: E402
from reproduce import app  # noqa: E402

PAPER_FILE = Path(__file__).parent / "data" / "mpcformer_paper.yaml"


def parse(cfg: Any) -> dict[str, Any]:
    """Every name and number in the config checked once, before anything is loaded or trained: approximations,
    data, training budget, what runs under MPC and what the bench times."""
    for f in cfg.bench.functions:
        require(f in B.FUNCTIONS, f"unknown function {f!r}; choose from {', '.join(B.FUNCTIONS)}")
    providers = ", ".join(PROVIDERS)
    require(cfg.mpc.provider in PROVIDERS, f"unknown mpc.provider {cfg.mpc.provider!r}; choose from {providers}")
    require(
        cfg.mpc.provider == "TTP" or not cfg.mpc_eval.models,
        f"mpc.provider={cfg.mpc.provider} lets the model owner see the input: it is for timing only "
        "(bench.providers); accuracy under MPC needs TTP",
    )
    require(len(cfg.bench.providers) > 0, f"bench.providers is empty; give one or more of {providers}")
    for prov in cfg.bench.providers:
        require(prov in PROVIDERS, f"unknown provider {prov!r} in bench.providers; choose from {providers}")
    ev = cfg.mpc_eval
    require(ev.batch_size is not None and ev.batch_size >= 1, f"mpc_eval.batch_size must be >= 1, got {ev.batch_size}")
    require(ev.examples is None or ev.examples >= 1, f"mpc_eval.examples must be >= 1 or null, got {ev.examples}")
    require(ev.risk_examples >= 0, f"mpc_eval.risk_examples must be >= 0, got {ev.risk_examples}")
    require(
        ev.length_bucket is None or ev.length_bucket >= 1,
        f"mpc_eval.length_bucket must be >= 1 or null, got {ev.length_bucket}",
    )
    require(cfg.train.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {cfg.train.checkpoint_every}")
    require(
        cfg.train.teacher_cache_max_gb > 0,
        f"train.teacher_cache_max_gb must be > 0, got {cfg.train.teacher_cache_max_gb}",
    )
    if cfg.model.name not in ("minilm", "tiny"):
        check_model_name(str(cfg.model.name))
    approxs = [Approximation.parse(a) for a in cfg.approximations]
    require(len(approxs) > 0, "give at least one approximation")
    mpc_models = [Approximation.parse(a) for a in cfg.mpc_eval.models]
    bench_models = [Approximation.parse(a) for a in cfg.bench.models]
    for key, chosen in (("mpc_eval.models", mpc_models), ("bench.models", bench_models)):
        missing = [a.name for a in chosen if a != EXACT and a not in approxs]
        require(
            not missing,
            f"{key}: {', '.join(missing)} not trained in this run: add them to approximations "
            f"({EXACT.name}, the teacher, is always there)",
        )
    return {
        "approximations": approxs,
        "mpc_models": mpc_models,
        "bench_models": bench_models,
        "data": DataConfig(**OmegaConf.to_container(cfg.data, resolve=True)),
        "budget": Budget(**OmegaConf.to_container(cfg.train, resolve=True)),
        "model_lengths": list(cfg.bench.model_lengths) + (list(cfg.bench.long_lengths) if cfg.bench.long else []),
    }


def _training_keys(cfg: Any) -> dict[str, Any]:
    """What a checkpoint's numbers depend on: the thread count too (a float sum split over more threads rounds
    differently, so a run at another thread count would resume a different run's weights)."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "train")}
    for k in ("checkpoint_every", "teacher_cache_max_gb"):  # when to save and what to refuse change no number
        keys["train"].pop(k, None)
    return keys | {"seed": cfg.seed, "torch_threads": cfg.torch_threads}


def plan(cfg: Any, p: dict[str, Any]) -> None:
    b: Budget = p["budget"]
    print(
        f"plan: teacher {cfg.model.name} (layers: {cfg.model.layers or 'all'}) fine-tuned on {cfg.data.name} "
        f"(length {cfg.data.max_length}) for {b.teacher_steps} steps at batch {b.batch_size}"
    )
    print(
        f"plan: for each of {', '.join(a.name for a in p['approximations'])}: two baselines ({b.baseline_steps} "
        f"steps each), distillation stage 1 ({b.stage1_steps}) and stage 2 ({b.stage2_steps}); choices on dev"
    )
    if over := b.describe_overrides(p["approximations"]):
        print(f"plan: per approximation (chosen on dev): {over}")
    print(
        f"plan: under MPC (TTP, audited): {', '.join(a.name for a in p['mpc_models'])} on "
        f"{cfg.mpc_eval.examples or 'all'} test examples; bench {', '.join(cfg.bench.functions)} at lengths "
        f"{list(cfg.bench.function_lengths)}, models {', '.join(a.name for a in p['bench_models'])} at "
        f"{p['model_lengths']}, providers {list(cfg.bench.providers)}"
    )
    every = f"every {b.checkpoint_every} steps and " if b.checkpoint_every else ""
    print(
        f"plan: teacher outputs for distillation {'cached once' if b.teacher_cache else 'computed on each batch'}; "
        f"checkpoints {every}at the end of each run in "
        f"{checkpoint_dir(cfg.checkpoint_dir, cfg.scale.name, _training_keys(cfg))}"
    )


def run(ctx: app.RunContext) -> None:
    cfg = ctx.cfg
    p = parse(cfg)
    plan(cfg, p)
    if ctx.dry_run:
        return
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    paper = yaml.safe_load(PAPER_FILE.read_text())
    tok, teacher = load_teacher(cfg.model.name, int(cfg.model.num_labels), cfg.model.layers, int(cfg.seed))
    splits = load_splits(p["data"], int(cfg.seed))
    data = encode_splits(tok, splits, p["data"].max_length, teacher)
    majority = 100 * majority_accuracy(data["train"].labels, data["test"].labels)

    study = run_study(
        teacher,
        data,
        p["approximations"],
        p["budget"],
        checkpoint_dir(cfg.checkpoint_dir, cfg.scale.name, _training_keys(cfg)),
        ctx.tracker,
        int(cfg.seed),
    )
    models = {EXACT: study.exact} | study.students
    calibrate(list(models.values()), data["train"])
    test = data["test"].head(cfg.mpc_eval.examples or len(data["test"]))
    mpc = mpc_accuracy(
        {f"{a.label}{'' if a == EXACT else ' (distilled)'}": models[a] for a in p["mpc_models"]},
        test,
        int(cfg.mpc_eval.batch_size),
        float(cfg.mpc.timeout_s),
        int(cfg.mpc_eval.risk_examples),
        cfg.mpc_eval.length_bucket,
    )
    costs, sp = B.bench_all(
        study.exact,
        {a.name: models[a] for a in p["bench_models"]},
        tok,
        list(splits["test"]["text"]),
        list(cfg.bench.functions),
        list(cfg.bench.function_lengths),
        p["model_lengths"],
        list(cfg.bench.providers),
        int(cfg.bench.activation_layer),
        float(cfg.mpc.timeout_s),
    )

    longest = max(p["model_lengths"], default=0)
    acc = B.with_model_speedup(study.accuracy, sp, p["bench_models"], longest, cfg.bench.providers[-1])
    b, t = p["budget"], study.teacher_accuracy
    ctx.out.table(
        "accuracy",
        beside_paper(acc, pd.DataFrame(paper["imdb"]), on="approximation"),
        title=f"Test accuracy (%) per approximation, {cfg.data.name}, teacher {cfg.model.name} "
        f"(measured {t['test']:.1f}, majority class {majority:.1f}; paper's BERT-base on IMDb "
        f"{paper['imdb_teacher_accuracy']})",
        note=f"Measured: {cfg.data.name} test split ({len(data['test'])} examples), length "
        f"{p['data'].max_length}, batch {b.batch_size}: teacher {b.teacher_steps} steps; each baseline "
        f"{b.baseline_steps} = stage 1 {b.stage1_steps} + stage 2 {b.stage2_steps} (the distillation's). "
        "acc_no_distill_no_pretrain: the student's architecture from random weights trained on the labels"
        + (", its random word embeddings frozen (train.freeze_word_embeddings)" if b.freeze_word_embeddings else "")
        + "; acc_no_distill: the student from the teacher's weights trained on the labels. "
        "Steps and learning rates were chosen on the dev split (table dev_accuracy), never on test; "
        f"settings that differ per approximation: {b.describe_overrides(p['approximations']) or 'none'}. "
        f"Speedup: whole model under MPC at length {longest} ({cfg.bench.providers[-1]}), only for the "
        "students in bench.models. Paper columns: IMDb, BERT-base, length 512; the released code picks "
        "checkpoints on IMDb's test split, so the paper's numbers are optimistic.",
    )
    ctx.out.table(
        "dev_accuracy", study.dev, title=f"Dev accuracy (%): where the recipe was chosen (teacher {t['dev']:.1f})"
    )
    ctx.out.table(
        "diagnostics",
        diagnostics(study.teacher, study.students, data),
        title="Why a student does or does not learn: [CLS] spread and gradient at the embeddings",
        note="cls_spread: standard deviation over 64 test examples of the final [CLS] representation, "
        "averaged over features (near 0: the same answer for every input). embedding_grad: norm of the "
        "label loss's gradient at the embeddings on 16 training examples, for the student as it starts "
        "(the teacher's weights with the approximations swapped in) and for the teacher.",
    )
    ctx.out.table(
        "mpc_accuracy",
        mpc,
        title=f"Under MPC (TTP, audited) on {len(test)} test examples",
        note="acc_mpc: labels from the logits party 1 learned; acc_plaintext: the same model in plaintext; "
        "leaks_found: findings of mpcformer.audit (every value each party sent or learned); "
        "expected_wraps_per_example: expected wrapped two-party truncations (mpcformer.private_inference."
        f"truncation_risk) on the first {cfg.mpc_eval.risk_examples} examples. Times on a shared "
        "2-core machine, loopback.",
    )
    ctx.out.table(
        "functions",
        costs[costs.kind == "function"].drop(columns="kind"),
        title="Per function under CrypTen: wall time, rounds and MB per party",
        note="Inputs: the fine-tuned teacher's attention scores and GeLU inputs on real test text, batch 1. "
        "LAN and WAN columns are ESTIMATES from rounds and bytes. Paper (repository figure, BERT-base, "
        "length 512): " + ", ".join(f"{r['function']} {r['time_s']} s" for r in paper["functions"]),
    )
    ctx.out.table(
        "models",
        costs[costs.kind == "model"].drop(columns="kind"),
        title="Whole model under CrypTen, batch 1 (token one-hot rows to logits)",
        note="max_abs_error: largest logit difference against the same model in plaintext.",
    )
    ctx.out.table(
        "speedups",
        sp,
        title="Speedups (measured wall time, same shapes, same run)",
        note="Paper: Quad over GeLU 22x, 2ReLU over softmax 2.7x, 2Quad over softmax 12.5x (length 512); "
        "Quad+2Quad BERT-base over BERT-base 2.2x at 128 (GLUE), 5.26x at 512 (IMDb).",
    )
    if len(sp):
        ctx.out.figure("speedup_vs_length", B.speedup_figure(sp))
    claims = decide_claims(
        study.accuracy,
        t["test"],
        majority,
        sp,
        mpc,
        paper,
        len(data["test"]),
        scratch_frozen_embeddings=b.freeze_word_embeddings,
    )
    write_claims(ctx.out, claims, "mpcformer", ctx.scale)
    ctx.out.json(
        "summary", {"teacher_accuracy": t, "majority_accuracy": majority, "claims": {c.key: c.verdict for c in claims}}
    )


if __name__ == "__main__":
    app.main("mpcformer", run)
