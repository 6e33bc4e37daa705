"""Fine-tuning with TP x PP and a compression plan: one train loop for every layout, exact resume.

`finetune(rank, world, cfg)` runs on every rank (through `common.distributed.run_processes`, or directly
for one process). Every rank reads the same batches (a seeded permutation per epoch, so step i always sees
the same batch, which makes resume exact); the weights start from the one-process model (all-MiniLM-L6-v2,
truncated, plus a seeded classifier) sliced for this rank, so every layout starts from the same point.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.checkpoint import (
    agreed_resume,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from common.errors import require

from . import compressors as C
from . import fused
from .models import (
    BertConfig,
    BertModel,
    Plan,
    hf_config,
    load_hf_bert,
    minilm_config,
    uncompressed,
    validate,
)
from .parallel import (
    Parallel,
    gpipe_step,
    recv_activation,
    send_activation,
    setup,
    shard,
    sync_partial_grads,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    tp: int = 1
    pp: int = 1
    micro_batches: int = 1
    layers: int = 4
    seq_len: int = 32
    batch_size: int = 32
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01
    dropout: float = 0.1
    freeze_word_embeddings: bool = True  # their dense gradient and Adam update dominate a short CPU fine-tuning
    eval_dev: bool = False
    eval_batch_size: int = 128
    max_eval: int | None = None  # cap on dev/test examples (smoke)
    seed: int = 0
    compressor: C.CompressorSpec = field(default_factory=lambda: C.CompressorSpec("none"))
    start_layer: int = 0
    backward: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    stop_after: int | None = None  # stop (as if interrupted) after this many steps; for resume tests
    model_path: str | None = None  # a Hugging Face BERT directory; None: all-MiniLM-L6-v2 from its package
    glue_root: str | None = None  # GLUE's task folders; None: Rotten Tomatoes from its package
    task: str = "sst2"  # the GLUE task when glue_root is set
    compile_quantizer: bool = False  # the quantizer's compiled loops (compression.fused); off: eager, the same bytes

    def __post_init__(self) -> None:
        if not isinstance(self.compressor, C.CompressorSpec):
            self.compressor = C.CompressorSpec.parse(dict(self.compressor))

    def plan(self) -> Plan:
        return Plan(self.compressor, self.start_layer, self.backward, self.seed)

    def model_config(self) -> BertConfig:
        if self.model_path is None:
            return minilm_config(self.layers, self.dropout)
        from common.text_data import glue_task

        labels = len(glue_task(self.task).labels) if self.glue_root else 2
        return hf_config(self.model_path, self.layers, self.dropout, labels)

    @property
    def eval_split(self) -> str:
        """Rotten Tomatoes: its held-out test split; GLUE: dev (GLUE's test files have no labels)."""
        return "dev" if self.glue_root else "test"

    def check(self) -> None:
        """Bad settings as UserErrors; the model's shape is checked once its directory exists (`missing_paths`)."""
        require(
            self.batch_size % self.micro_batches == 0,
            f"batch_size {self.batch_size} does not split into {self.micro_batches} micro-batches",
        )
        if self.model_path is None or Path(self.model_path).exists():
            validate(self.model_config(), self.plan(), self.batch_size // self.micro_batches * self.seq_len)

    def missing_paths(self) -> list[str]:
        return [p for p in (self.model_path, self.glue_root) if p and not Path(p).exists()]


def tokenize(
    texts: list[str], seq_len: int, pairs: list[str] | None = None, model_path: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded/truncated to `seq_len`, with the model's own tokenizer
    (all-MiniLM-L6-v2's when `model_path` is None). Sentence pairs are joined BERT's way, [SEP] between."""
    from transformers import AutoTokenizer

    from common.data import minilm_path

    tok = AutoTokenizer.from_pretrained(str(model_path or minilm_path()))
    enc = tok(list(texts), pairs, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def data_key(cfg: TrainConfig) -> tuple:
    """The settings `load_data` reads: fine-tunings with equal keys share one load (the seed resplits Rotten
    Tomatoes)."""
    return (cfg.seed, cfg.seq_len, cfg.max_eval, cfg.model_path, cfg.glue_root, cfg.task)


def load_data(cfg: TrainConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{split: (ids, mask, labels)}: Rotten Tomatoes train/dev/test, or a GLUE task's train/dev."""
    if cfg.glue_root:
        from common.text_data import glue, glue_task_folder

        frames = glue(cfg.task, glue_task_folder(cfg.glue_root, cfg.task))
        splits = {
            k: (df["text"].tolist(), df["text_pair"].tolist() if "text_pair" in df else None, df["label"].tolist())
            for k, df in frames.items()
        }
    else:
        from common.data import rotten_tomatoes

        splits = {
            k: (df["text"].tolist(), None, df["label"].tolist()) for k, df in rotten_tomatoes(seed=cfg.seed).items()
        }
    out = {}
    for split, (texts, pairs, labels) in splits.items():
        if split != "train" and cfg.max_eval:
            texts, labels = texts[: cfg.max_eval], labels[: cfg.max_eval]
            pairs = pairs[: cfg.max_eval] if pairs is not None else None
        ids, mask = tokenize(texts, cfg.seq_len, pairs, cfg.model_path)
        out[split] = (ids, mask, torch.tensor(labels))
    return out


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The examples of `step`: a fresh seeded permutation each epoch, incomplete batches dropped."""
    per_epoch = n // batch_size
    epoch, j = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[j * batch_size : (j + 1) * batch_size]


def initial_weights(cfg: TrainConfig, full_model: BertModel) -> dict[str, torch.Tensor]:
    """The one-process model's state: the pretrained encoder, a seeded classifier, fresh compressors."""
    from common.data import minilm_path

    sd = full_model.state_dict()
    sd.update(load_hf_bert(cfg.model_path or minilm_path(), cfg.model_config()))
    return sd


def param_groups(model: BertModel, cfg: TrainConfig) -> list[dict]:
    """The model's trainable parameters; a trainable compressor's at `lr * compressor.lr_scale`."""
    comp = {id(p) for m in model.modules() if isinstance(m, C.Compressor) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in comp], "lr": cfg.lr}]
    if comp:
        groups.append({"params": [p for p in params if id(p) in comp], "lr": cfg.lr * cfg.compressor.lr_scale})
    return groups


def build(cfg: TrainConfig, par: Parallel, full_state: dict[str, torch.Tensor] | None = None) -> BertModel:
    """This rank's model; sliced from `full_state` (the one-process weights) when given."""
    model = BertModel(cfg.model_config(), par, cfg.plan())
    if full_state is not None:
        missing = set(model.load_state_dict(shard(model, full_state, par.tp, par.tp_rank), strict=False).missing_keys)
        require(all(k.startswith("cuts.") for k in missing), f"weights missing for {sorted(missing)[:3]}")
    return model


def seed_replicas(seed: int) -> None:
    """Re-seed after building the model: sharded layers of different shapes consume different amounts of
    randomness, and dropout on replicated activations must draw the same mask on every TP rank."""
    torch.manual_seed(seed * 7919 + 17)


def forward_backward(
    model: BertModel, par: Parallel, ids, mask, labels, micro_batches: int = 1, schedule: str = "gpipe"
) -> float | None:
    """Loss (mean over the batch) and its gradients in the model; the loss on last-stage ranks, else None.
    `schedule`: the pipeline schedule when pp > 1 (gpipe or 1f1b; both give the same gradients)."""
    if par.pp == 1:
        loss = F.cross_entropy(model(ids, mask), labels)
        loss.backward()
        sync_partial_grads(model, par.tp_comm)
        return loss.item()
    ids_, mask_, labels_ = (t.chunk(micro_batches) for t in (ids, mask, labels))
    shape = (ids_[0].shape[0], ids.shape[1], model.stage.cfg.hidden)
    total = gpipe_step(
        lambda x, i: model(ids_[i] if x is None else x, mask_[i]),
        lambda out, i: F.cross_entropy(out, labels_[i]) / micro_batches,
        par,
        micro_batches,
        shape,
        model.stage.cut_in,
        model.stage.cut_out,
        schedule=schedule,
    )
    sync_partial_grads(model, par.tp_comm)
    return None if total is None else total.item()


@torch.inference_mode()
def predict(model: BertModel, par: Parallel, ids, mask) -> torch.Tensor | None:
    """Logits on last-stage ranks (None elsewhere); activations cross the pipeline cuts compressed."""
    if par.pp == 1:
        return model(ids, mask)
    x = None
    if not par.first:
        x, _ = recv_activation(
            (*ids.shape, model.stage.cfg.hidden), model.stage.cut_in, par.pp_comm, par.peer(par.stage - 1)
        )
    out = model(ids if x is None else x, mask)
    if par.last:
        return out
    send_activation(out, model.stage.cut_out, par.pp_comm, par.peer(par.stage + 1))
    return None


def accuracy(model, par, data, batch_size) -> float | None:
    ids, mask, labels = data
    model.eval()
    correct, seen = 0, 0
    for i in range(0, len(labels), batch_size):
        logits = predict(model, par, ids[i : i + batch_size], mask[i : i + batch_size])
        if logits is not None:
            correct += (logits.argmax(-1) == labels[i : i + batch_size]).sum().item()
            seen += len(logits)
    model.train()
    return correct / seen if seen else None


def finetune(rank: int, world: int, cfg: TrainConfig, data=None, par: Parallel | None = None) -> dict | None:
    """Fine-tune (Rotten Tomatoes or a GLUE task); returns {loss curve, accuracy, bytes} on the reporting rank
    (last stage, tensor-parallel rank 0) and None on the others. `par`: this layout's groups from an earlier
    fine-tuning (their byte counts are reset), else built here."""
    torch.manual_seed(cfg.seed)
    require(not cfg.missing_paths(), f"not found: {', '.join(cfg.missing_paths())}")
    cfg.check()
    if par is None or (par.tp, par.pp) != (cfg.tp, cfg.pp):
        par = setup(cfg.tp, cfg.pp)
    for c in par.comms():
        c.stats.clear()
    data = data or load_data(cfg)
    full = BertModel(cfg.model_config(), Parallel(), cfg.plan())
    model = build(cfg, par, initial_weights(cfg, full))
    del full
    seed_replicas(cfg.seed)
    if cfg.freeze_word_embeddings and model.stage.embeddings is not None:
        model.stage.embeddings.word.weight.requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt_dir is not None:  # every rank resumes from the newest step all ranks saved completely (a collective)
        start, found = agreed_resume(ckpt_dir, f"rank{rank}-*.pt")
        if found is not None:
            restore_training_state(load_checkpoint(found), {"model": model}, {"opt": opt})
            log.info("rank %d resumed from %s at step %d", rank, found, start)
    ids, mask, labels = data["train"]
    reporting = par.last and par.tp_rank == 0
    losses = []
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    progress = range(start, end)
    if reporting:  # one rank's bar (the reporting one: TP rank 0 of the last stage)
        from tqdm import tqdm

        desc = f"TP{cfg.tp}xPP{cfg.pp} {cfg.compressor.name} from layer {cfg.start_layer}"
        progress = tqdm(progress, desc=desc, leave=False)
    model.train()
    for step in progress:
        idx = torch.from_numpy(batch_indices(step, len(labels), cfg.batch_size, cfg.seed))
        opt.zero_grad(set_to_none=True)
        with uncompressed(model) if step < cfg.compressor.warmup_steps else nullcontext():
            loss = forward_backward(model, par, ids[idx], mask[idx], labels[idx], cfg.micro_batches)
        opt.step()
        if loss is not None:
            losses.append(loss)
        if ckpt_dir is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            save_checkpoint(
                ckpt_dir / f"rank{rank}-step{step + 1:06d}.pt", training_state(step + 1, {"model": model}, {"opt": opt})
            )
    result = {
        "losses": losses,
        "steps_run": end - start,
        "bytes": sum(c.total_bytes() for c in par.comms()),
        "params": {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
    }
    if end == cfg.steps:
        if cfg.eval_dev and cfg.eval_split != "dev":
            result["dev_acc"] = accuracy(model, par, data["dev"], cfg.eval_batch_size)
        result["eval_acc"] = accuracy(model, par, data[cfg.eval_split], cfg.eval_batch_size)
        if cfg.eval_split == "test":
            result["test_acc"] = result["eval_acc"]
    return result if reporting else None


def run_settings(rank: int, world: int, configs: list[TrainConfig]) -> list[dict | None]:
    """Several fine-tunings in one set of processes (saves the start-up of a process group per setting); the data
    is loaded once per distinct dataset (`data_key`), the layout's process groups built once (each build is a
    rendezvous of every rank: ~0.7 CPU-s per rank on the loaded 2-core machine)."""
    loaded: dict[tuple, dict] = {}
    grids: dict[tuple[int, int], Parallel] = {}
    out = []
    for cfg in configs:
        key = data_key(cfg)
        if key not in loaded:
            loaded[key] = load_data(cfg)
        if (cfg.tp, cfg.pp) not in grids:
            grids[(cfg.tp, cfg.pp)] = setup(cfg.tp, cfg.pp)
        started = time.time()
        with fused.compiled_if(cfg.compile_quantizer, "accuracy.compile_quantizer=false"):
            r = finetune(rank, world, cfg, loaded[key], grids[(cfg.tp, cfg.pp)])
        if r is not None and "eval_acc" in r:  # a line per fine-tuning (the group of a layout runs for minutes)
            where = f" from layer {cfg.start_layer}" if cfg.compressor.active else ""
            print(
                f"TP{cfg.tp}xPP{cfg.pp} {cfg.compressor.name}{where} seed {cfg.seed}: {cfg.eval_split} accuracy "
                f"{r['eval_acc']:.3f}, {time.time() - started:.0f}s",
                flush=True,
            )
        if r is not None:
            r.pop("params")
        out.append(r)
    return out


def to_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
