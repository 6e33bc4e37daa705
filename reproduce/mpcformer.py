"""python -m reproduce.mpcformer [scale=smoke|mini|paper] [key=value ...]

MPCFormer end to end: fine-tune a teacher, build each MPC-friendly student, train the paper's two baselines
and distill (stage 1 then stage 2); run the distilled student under MPC (two parties and a dealer) on test
examples and compare with plaintext; time every function and the whole models under CrypTen.
Tables: the paper's IMDb layout (accuracy per approximation, MPC speedup) beside the paper's, accuracy under
MPC, per-function and whole-model costs, speedups; a figure of speedup against sequence length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from omegaconf import OmegaConf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common.errors import UserError, require  # noqa: E402
from common.results import beside_paper  # noqa: E402
from mpcformer import bench as B  # noqa: E402
from mpcformer.convert import Approximation, to_student  # noqa: E402
from mpcformer.distill import (Encoded, TrainConfig, accuracy, distill, encode, fine_tune, predict,  # noqa: E402
                               task_loss)
from mpcformer.private_inference import (calibrate_layer_norms, check_against_plaintext, private_inference,  # noqa: E402
                                         truncation_risk)
from reproduce import app  # noqa: E402

log = logging.getLogger("reproduce.mpcformer")

PAPER_FILE = Path(__file__).parent / "data" / "mpcformer_paper.yaml"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=128)
DATASETS = ("rotten_tomatoes", "imdb") + tuple(f"glue/{t}" for t in ("sst2", "mrpc", "qnli", "rte"))


# ---------------------------------------------------------------------------------------------------------
# Model and data


def load_tokenizer_and_teacher(name: str, num_labels: int, seed: int):
    """('minilm' | 'tiny' | a hub id) -> (tokenizer, sequence classifier). 'tiny' is a random 2-layer BERT."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig
    from transformers.utils import logging as hf_logging

    from common.data import minilm_path

    hf_logging.set_verbosity_error()
    if name in ("minilm", "tiny"):
        path = minilm_path()
        tok = AutoTokenizer.from_pretrained(path)
        if name == "minilm":
            return tok, AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=tok.vocab_size, num_labels=num_labels, **TINY)
        return tok, AutoModelForSequenceClassification.from_config(cfg)
    try:
        return (AutoTokenizer.from_pretrained(name),
                AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels))
    except OSError as exc:
        raise UserError(f"model {name!r} is not available offline ({str(exc).splitlines()[0]}); run once "
                        "with HF_HUB_OFFLINE=0 to download it") from exc


def load_splits(cfg: Any) -> dict[str, pd.DataFrame]:
    """train/test DataFrames (text, label) for the configured dataset."""
    name = cfg.data.name
    require(name in DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "rotten_tomatoes":
        from common.data import rotten_tomatoes

        splits = rotten_tomatoes(seed=int(cfg.seed))
    else:
        try:
            import datasets
        except ImportError as exc:
            raise UserError("the paper's datasets need the `datasets` package: pip install 'datasets>=2.14'") from exc
        if name == "imdb":
            ds = datasets.load_dataset("imdb")
            splits = {k: ds[k].to_pandas()[["text", "label"]] for k in ("train", "test")}
        else:  # single-sentence or pair GLUE tasks; pairs are joined with the separator token
            task = name.split("/")[1]
            ds = datasets.load_dataset("glue", task)
            cols = [c for c in ds["train"].column_names if c not in ("label", "idx")]
            splits = {}
            for k, split in (("train", "train"), ("test", "validation")):
                df = ds[split].to_pandas()
                splits[k] = pd.DataFrame({"text": df[cols].astype(str).agg(" [SEP] ".join, axis=1),
                                          "label": df["label"]})
    n_train, n_test = cfg.data.train_examples, cfg.data.test_examples
    if n_train:
        splits["train"] = splits["train"].iloc[: int(n_train)]
    if n_test:
        splits["test"] = splits["test"].iloc[: int(n_test)]
    return splits


def train_configs(cfg: Any) -> dict[str, TrainConfig]:
    t, d = cfg.train, cfg.distill
    common = dict(batch_size=int(t.batch_size), lr=float(d.lr), weight_decay=float(d.weight_decay),
                  warmup_frac=float(d.warmup_frac), temperature=float(d.temperature),
                  freeze_word_embeddings=bool(t.freeze_word_embeddings))
    return {k: TrainConfig(steps=int(t[f"{k}_steps"]), **common)
            for k in ("teacher", "baseline", "stage1", "stage2")}


def checkpoint_dir(cfg: Any) -> Path:
    """One directory per scale and training-relevant config, so a changed config never resumes a stale run."""
    keys = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "train", "distill")}
    keys["seed"] = int(cfg.seed)
    digest = hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.checkpoint_dir) / f"{cfg.scale.name}-{digest}"


# ---------------------------------------------------------------------------------------------------------
# Plan (dry run)


def plan(cfg: Any) -> None:
    approxs = [Approximation.parse(a).name for a in cfg.approximations]
    for a in list(cfg.bench.models) + list(cfg.mpc_eval.approximations):
        Approximation.parse(a)
    for f in cfg.bench.functions:
        require(f in B.FUNCTIONS, f"unknown function {f!r}; choose from {', '.join(B.FUNCTIONS)}")
    require(cfg.data.name in DATASETS, f"unknown dataset {cfg.data.name!r}; choose one of {', '.join(DATASETS)}")
    t = cfg.train
    print(f"plan: teacher {cfg.model.name} fine-tuned on {cfg.data.name} (length {cfg.data.max_length}) for "
          f"{t.teacher_steps} steps at batch {t.batch_size}")
    print(f"plan: for each of {', '.join(approxs)}: baseline from random weights and from the teacher "
          f"({t.baseline_steps} steps each), distillation stage 1 ({t.stage1_steps}) and stage 2 ({t.stage2_steps})")
    print(f"plan: under MPC ({cfg.mpc.provider}): {', '.join(cfg.mpc_eval.approximations)} on "
          f"{cfg.mpc_eval.examples} test examples")
    print(f"plan: bench {', '.join(cfg.bench.functions)} at lengths {list(cfg.bench_sizes.function_lengths)}, "
          f"models {', '.join(cfg.bench.models)} at {list(cfg.bench_sizes.model_lengths)}, providers "
          f"{', '.join(cfg.bench_sizes.providers)}")
    print(f"plan: checkpoints in {checkpoint_dir(cfg)}")
    if cfg.model.name not in ("minilm", "tiny"):
        print(f"check: {cfg.model.name} {'is' if _hub_cached(cfg.model.name) else 'is NOT'} in the local hub cache")
    if cfg.data.name != "rotten_tomatoes":
        import importlib.util

        ok = importlib.util.find_spec("datasets") is not None
        print(f"check: `datasets` package {'installed' if ok else 'missing (pip install datasets)'}")


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001
        return False


# ---------------------------------------------------------------------------------------------------------
# Stages


def train_all(ctx, tok, teacher, data: dict[str, Encoded], approxs: list[Approximation]):
    """Teacher, then per approximation: two baselines and the distilled student. Returns accuracies and models."""
    from transformers import AutoModelForSequenceClassification

    cfg, tcfg, ckpt = ctx.cfg, train_configs(ctx.cfg), checkpoint_dir(ctx.cfg)
    ckpt.mkdir(parents=True, exist_ok=True)
    fine_tune(teacher, data["train"], tcfg["teacher"], checkpoint=ckpt / "teacher.pt", tracker=ctx.tracker,
              name="teacher")
    teacher_acc = accuracy(teacher, data["test"])
    log.info("teacher test accuracy %.4f", teacher_acc)
    exact = to_student(teacher, "gelu+softmax")  # the teacher, returning raw attention scores for stage 1
    rows, students = [], {}
    for a in approxs:
        torch.manual_seed(int(cfg.seed))
        scratch = to_student(AutoModelForSequenceClassification.from_config(teacher.config), a, copy_model=False)
        fine_tune(scratch, data["train"], tcfg["baseline"], checkpoint=ckpt / f"{a.name}-scratch.pt",
                  tracker=ctx.tracker, name=f"{a.name}/scratch")
        plain = fine_tune(to_student(teacher, a), data["train"], tcfg["baseline"],
                          checkpoint=ckpt / f"{a.name}-finetune.pt", tracker=ctx.tracker, name=f"{a.name}/finetune")
        student = distill(to_student(teacher, a), exact, data["train"], tcfg["stage1"], tcfg["stage2"],
                          checkpoint_dir=ckpt, tracker=ctx.tracker, name=f"{a.name}/distill")
        row = {"approximation": a.label, "acc_no_distill_no_pretrain": 100 * accuracy(scratch, data["test"]),
               "acc_no_distill": 100 * accuracy(plain, data["test"]),
               "acc_distilled": 100 * accuracy(student, data["test"])}
        log.info("%s", row)
        ctx.tracker.log({f"acc/{a.name}/{k}": v for k, v in row.items() if k != "approximation"})
        rows.append(row)
        students[a.name] = student
    return teacher_acc, pd.DataFrame(rows), students


CALIBRATION_EXAMPLES = 64
RISK_EXAMPLES = 8  # truncation risk per example, from this many of the examples run under MPC
DIAGNOSTIC_EXAMPLES = 64


@torch.no_grad()
def cls_spread(model, data: Encoded, n: int = DIAGNOSTIC_EXAMPLES) -> float:
    """How much the final [CLS] representation (all the classifier sees) varies across examples: the mean
    over features of its standard deviation over the first `n` examples. Near 0: every input looks alike."""
    b = data.batch(torch.arange(min(n, len(data))))
    out = model.eval()(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    return float(out.hidden_states[-1][:, 0].std(0).mean())


def embedding_gradient(model, data: Encoded, n: int = 16) -> float:
    """Norm of the label loss's gradient reaching the embeddings on the first `n` training examples (no
    dropout): how much signal fine-tuning or distillation sends to the lower layers."""
    model.eval()
    params = [p for p in model.base_model.embeddings.parameters() if p.requires_grad]
    grads = torch.autograd.grad(task_loss(model, data.batch(torch.arange(min(n, len(data))))), params)
    return float(torch.sqrt(sum(g.square().sum() for g in grads)))


def diagnostics(teacher, students: dict, data: dict[str, Encoded], approxs) -> pd.DataFrame:
    """Per approximation: [CLS] spread of the distilled student and the gradient reaching the embeddings of
    the student as it starts (the teacher's weights), each beside the teacher's."""
    t_spread, t_grad = cls_spread(teacher, data["test"]), embedding_gradient(teacher, data["train"])
    rows = []
    for a in approxs:
        rows.append({"approximation": a.label, "cls_spread_distilled": cls_spread(students[a.name], data["test"]),
                     "cls_spread_teacher": t_spread,
                     "embedding_grad_at_start": embedding_gradient(to_student(teacher, a), data["train"]),
                     "embedding_grad_teacher": t_grad})
    return pd.DataFrame(rows)


def calibrate(models, data: Encoded) -> None:
    """The model owner's public LayerNorm scales for MPC, from its own training examples."""
    sub = data.head(CALIBRATION_EXAMPLES)
    for m in models:
        calibrate_layer_norms(m, sub.input_ids, sub.attention_mask)


def mpc_accuracy(ctx, students: dict, exact, data: Encoded) -> pd.DataFrame:
    """Each listed student under MPC on the first `mpc_eval.examples` test examples, against plaintext."""
    cfg = ctx.cfg
    n = min(int(cfg.mpc_eval.examples), len(data))
    sub = data.head(n)
    rows = []
    for name in cfg.mpc_eval.approximations:
        a = Approximation.parse(name)
        model = exact if a.name == "gelu+softmax" else students.get(a.name)
        if model is None:
            log.warning("%s was not trained in this run; skipped under MPC", a.name)
            continue
        res = private_inference(model, sub.input_ids, sub.attention_mask, provider=cfg.mpc.provider,
                                batch_size=int(cfg.mpc_eval.batch_size), timeout_s=float(cfg.mpc.timeout_s))
        check = check_against_plaintext(model, sub.input_ids, sub.attention_mask, res.logits)
        plain_pred = predict(model, sub).argmax(-1)
        few = sub.head(min(n, RISK_EXAMPLES))
        risk = truncation_risk(model, few.input_ids, few.attention_mask, batch_size=RISK_EXAMPLES,
                               timeout_s=float(cfg.mpc.timeout_s))
        rows.append({"model": f"{a.label} (distilled)", "provider": cfg.mpc.provider, "examples": n,
                     "length": int(sub.input_ids.shape[1]),
                     "acc_mpc": 100 * float((res.logits.argmax(-1) == sub.labels).float().mean()),
                     "acc_plaintext": 100 * float((plain_pred == sub.labels).float().mean()),
                     "label_agreement": 100 * check["label_agreement"],
                     "max_abs_logit_error": check["max_abs_logit_error"],
                     "expected_wraps_per_example": sum(risk.values()) / len(few),
                     "wall_s": res.wall_s, "s_per_example": res.wall_s / n,
                     "MB_p0": res.party(0).bytes / 1e6, "MB_p1": res.party(1).bytes / 1e6,
                     "rounds_p0": res.party(0).rounds, "rounds_p1": res.party(1).rounds})
        log.info("under MPC: %s", rows[-1])
    return pd.DataFrame(rows)


def real_inputs(teacher, tok, texts: list[str], lengths: list[int], layer: int):
    """Token ids of real test text packed to each length, and the teacher's layer-`layer` attention scores and
    GeLU inputs on them: the activations the per-function cases run on."""
    ids_all: list[int] = []
    for t in texts:
        ids_all += tok(t, add_special_tokens=False)["input_ids"]
        if len(ids_all) > max(lengths):
            break
    exact = to_student(teacher, "gelu+softmax")
    mlp = exact.base_model.encoder.layer[layer].intermediate.dense
    captured = {}
    hook = mlp.register_forward_hook(lambda m, i, o: captured.__setitem__("pre", o))
    token_ids, acts = {}, {}
    try:
        for L in lengths:
            ids = torch.tensor([[tok.cls_token_id] + ids_all[: L - 2] + [tok.sep_token_id]])
            require(ids.shape[1] == L, f"not enough test text for length {L}")
            token_ids[L] = ids
            with torch.no_grad():
                out = exact(input_ids=ids, output_attentions=True)
            scores, pre = out.attentions[layer], captured["pre"][0]
            acts |= {("gelu", L): pre, ("quad", L): pre}
            acts |= {(f, L): scores for f in ("softmax", "2relu", "2quad")}
    finally:
        hook.remove()
    return token_ids, acts


def run_benchmarks(ctx, teacher, tok, students: dict, texts: list[str]) -> pd.DataFrame:
    cfg = ctx.cfg
    f_lengths, m_lengths = list(cfg.bench_sizes.function_lengths), list(cfg.bench_sizes.model_lengths)
    layer = min(int(cfg.bench.activation_layer), teacher.config.num_hidden_layers - 1)
    token_ids, acts = real_inputs(teacher, tok, texts, sorted(set(f_lengths) | set(m_lengths)), layer)
    models = {}
    for name in cfg.bench.models:
        a = Approximation.parse(name)
        models[a.name] = to_student(teacher, a) if a.name == "gelu+softmax" else students.get(a.name)
        if models[a.name] is None:  # not trained in this run: its architecture with the teacher's weights
            models[a.name] = to_student(teacher, a)
            log.warning("%s was not trained in this run: timed with the teacher's weights", a.name)
    functions = [(f, L) for L in f_lengths for f in cfg.bench.functions]
    frames = []
    for provider in cfg.bench_sizes.providers:
        log.info("bench with %s: %d function cases, %d model cases", provider, len(functions),
                 len(models) * len(m_lengths))
        frames.append(B.run_bench(functions, models, m_lengths, acts, token_ids, provider,
                                  timeout_s=float(cfg.mpc.timeout_s)))
    return B.summarise(pd.concat(frames, ignore_index=True))


def speedup_figure(sp: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (fast, slow, provider), g in sp.groupby(["fast", "baseline", "provider"]):
        g = g.sort_values("length")
        ax.plot(g["length"], g["speedup (wall_s)"], marker="o", label=f"{fast} over {slow} ({provider})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("speedup (wall time, measured)")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title("MPC speedup of the approximations (CrypTen, 2 parties, loopback)")
    return fig


# ---------------------------------------------------------------------------------------------------------


def run(ctx: app.RunContext) -> None:
    cfg = ctx.cfg
    approxs = [Approximation.parse(a) for a in cfg.approximations]
    require(len(approxs) > 0, "give at least one approximation")
    if ctx.dry_run:
        plan(cfg)
        return
    plan(cfg)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    paper = yaml.safe_load(PAPER_FILE.read_text())
    tok, teacher = load_tokenizer_and_teacher(cfg.model.name, int(cfg.model.num_labels), int(cfg.seed))
    splits = load_splits(cfg)
    L = int(cfg.data.max_length)
    data = {k: encode(tok, df["text"], df["label"], L, teacher) for k, df in splits.items() if k in ("train", "test")}

    teacher_acc, acc, students = train_all(ctx, tok, teacher, data, approxs)
    diag = diagnostics(teacher, students, data, approxs)
    exact = to_student(teacher, "gelu+softmax")
    calibrate([exact, teacher, *students.values()], data["train"])
    mpc = mpc_accuracy(ctx, students, exact, data["test"])
    costs = run_benchmarks(ctx, teacher, tok, students, list(splits["test"]["text"]))

    # speedups: functions and whole models
    pairs = {"quad": "gelu", "2relu": "softmax", "2quad": "softmax"}
    pairs |= {Approximation.parse(m).name: "gelu+softmax" for m in cfg.bench.models
              if Approximation.parse(m).name != "gelu+softmax"}
    sp = B.speedups(costs, pairs)
    longest = max(cfg.bench_sizes.model_lengths)
    providers = list(cfg.bench_sizes.providers)
    provider = cfg.mpc.provider if cfg.mpc.provider in providers else providers[0]
    model_sp = sp[(sp.baseline == "gelu+softmax") & (sp.length == longest) & (sp.provider == provider)]
    by_label = {Approximation.parse(r["fast"]).label: r["speedup (wall_s)"] for _, r in model_sp.iterrows()}
    acc.insert(1, "speedup", [by_label.get(a, float("nan")) for a in acc.approximation])

    paper_imdb = pd.DataFrame(paper["imdb"])
    ctx.out.table("accuracy", beside_paper(acc, paper_imdb, on="approximation"),
                  title=f"Accuracy (%) per approximation, {cfg.data.name}, teacher {cfg.model.name} "
                        f"(measured {100 * teacher_acc:.1f}, paper's BERT-base on IMDb {paper['imdb_teacher_accuracy']})",
                  note=f"Measured: {cfg.data.name} test split ({len(data['test'])} examples), length {L}; "
                       f"training steps at batch {cfg.train.batch_size}: teacher {cfg.train.teacher_steps}, each "
                       f"baseline {cfg.train.baseline_steps}, stage 1 {cfg.train.stage1_steps}, stage 2 "
                       f"{cfg.train.stage2_steps}; word embeddings frozen: {cfg.train.freeze_word_embeddings}. "
                       f"Speedup: measured whole-model wall time of the exact model over the student under MPC at "
                       f"length {longest}, batch 1, provider {provider} (only the students listed in bench.models are timed). "
                       "Paper columns: IMDb, BERT-base, length 512.")
    ctx.out.table("diagnostics", diag, title="Why a student does or does not learn: [CLS] spread and gradient "
                  "at the embeddings",
                  note=f"cls_spread: standard deviation over the first {DIAGNOSTIC_EXAMPLES} test examples of the "
                       "final [CLS] representation (all the classifier sees), averaged over features; near 0 means "
                       "the student answers the same for every input. embedding_grad: norm of the label loss's "
                       "gradient reaching the embeddings on 16 training examples, for the student as it starts "
                       "(the teacher's weights with the approximations swapped in) and for the teacher.")
    ctx.out.table("mpc_accuracy", mpc, title="The distilled student under MPC (test subset)",
                  note="acc_mpc: labels from the logits party 1 revealed; acc_plaintext: the same student in "
                       "plaintext on the same examples; label_agreement: MPC vs plaintext predictions; expected_wraps_per_example: the "
                       "expected number of two-party truncations that wrap around the ring (each puts ~1e9 into one "
                       f"value) per example, computed exactly on the first {RISK_EXAMPLES} of these examples by "
                       "mpcformer.private_inference.truncation_risk. "
                       "Times on a shared 2-core machine, loopback (noisy).")
    fn = costs[costs.kind == "function"].drop(columns="kind")
    paper_fn = pd.DataFrame(paper["functions"])
    ctx.out.table("functions", fn, title="Per function under CrypTen: wall time, rounds and MB per party",
                  note=f"Inputs: the fine-tuned teacher's layer-{int(cfg.bench.activation_layer)} attention scores "
                       f"(heads x L x L) and GeLU inputs (L x {teacher.config.intermediate_size}) on real test text, "
                       "batch 1; max_abs_error against plaintext (exact erf GeLU and softmax; the approximations "
                       "themselves). LAN (10 Gbps, 0.1 ms) and WAN (100 Mbps, 40 ms) columns are ESTIMATES from "
                       "rounds and bytes, not measurements. Paper (repository figure, BERT-base, length 512): "
                       + ", ".join(f"{r['function']} {r['time_s']} s" for r in paper["functions"]))
    ctx.out.table("models", costs[costs.kind == "model"].drop(columns="kind"),
                  title="Whole model under CrypTen, batch 1 (from token one-hot rows to logits)",
                  note="max_abs_error: largest logit difference against the same model in plaintext "
                       "(the exact model computes GeLU in tanh form under MPC).")
    ctx.out.table("speedups", sp, title="Speedups (measured wall time, same shapes, same run)",
                  note="Paper: Quad over GeLU 22x, 2ReLU over softmax 2.7x, 2Quad over softmax 12.5x (length 512); "
                       "Quad+2Quad BERT-base over BERT-base 2.2x at 128 (GLUE), 5.26x at 512 (IMDb).")
    ctx.out.figure("speedup_vs_length", speedup_figure(sp))
    ctx.out.json("summary", {"teacher_accuracy": teacher_acc, "paper_function_times": paper_fn.to_dict("records")})


if __name__ == "__main__":
    app.main("mpcformer", run)
