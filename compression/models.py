"""A BERT-style encoder classifier built from the tensor-parallel layers, split into pipeline stages, with a
compressor at every tensor-parallel all-reduce and pipeline cut from a chosen layer onward; and the loading
of all-MiniLM-L6-v2's weights into it (optionally truncated to its first layers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import UserError, require

from . import compressors as C
from .parallel import (
    ColumnParallelLinear,
    Cut,
    Parallel,
    RowParallelLinear,
    copy_to_tp,
    split_layers,
)


@dataclass
class BertConfig:
    vocab: int = 30522
    hidden: int = 384
    heads: int = 12
    ffn: int = 1536
    layers: int = 6
    max_positions: int = 512
    type_vocab: int = 2
    classes: int = 2
    dropout: float = 0.1  # hidden dropout; attention-probability dropout is off so TP ranks stay in step
    ln_eps: float = 1e-12


@dataclass
class Plan:
    """What is compressed: `spec` at every TP all-reduce of layers >= `start_layer` (forward; the backward
    all-reduce too when `backward`), and at every pipeline cut in front of such a layer."""

    spec: C.CompressorSpec = field(default_factory=C.CompressorSpec)
    start_layer: int = 0
    backward: bool = False
    seed: int = 0
    tp_sites: bool = True  # compress the tensor-parallel all-reduces (simulated locally when tp == 1)
    pp_cuts: bool = True  # compress at pipeline cuts

    def active(self, layer: int) -> bool:
        return self.spec.name != "none" and layer >= self.start_layer

    def build(self, hidden: int, site: int, backward: bool = False) -> C.Compressor | None:
        if backward:
            require(
                self.spec.name != "autoencoder",
                "the auto-encoder compresses activations only; set backward=false for it",
            )
        return C.build(self.spec, hidden, seed=self.seed * 10_007 + 2 * site + int(backward))


def validate(cfg: BertConfig, plan: Plan, tokens: int) -> None:
    """Bad settings as UserErrors before any process starts."""
    require(
        0 <= plan.start_layer < cfg.layers,
        f"start_layer {plan.start_layer} is out of range for a {cfg.layers}-layer model (0..{cfg.layers - 1})",
    )
    plan.spec.check(cfg.hidden, tokens)
    C.build(plan.spec, cfg.hidden)  # checks the remaining options (bits, ratio, rank, name)
    if plan.backward:
        plan.build(cfg.hidden, 0, backward=True)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig, par: Parallel, fwd: C.Compressor | None, bwd: C.Compressor | None):
        super().__init__()
        require(cfg.heads % par.tp == 0, f"{cfg.heads} heads do not split over tp={par.tp}")
        self.heads, self.head_dim = cfg.heads // par.tp, cfg.hidden // cfg.heads
        self.q, self.k, self.v = (ColumnParallelLinear(cfg.hidden, cfg.hidden, par.tp) for _ in range(3))
        self.o = RowParallelLinear(cfg.hidden, cfg.hidden, par.tp, par.tp_comm, fwd)
        self.comm, self.bwd = par.tp_comm, bwd

    def forward(self, x, bias):
        b, s, _ = x.shape
        x = copy_to_tp(x, self.comm, self.bwd)
        q, k, v = (lin(x).view(b, s, self.heads, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: BertConfig, par: Parallel, fwd: C.Compressor | None, bwd: C.Compressor | None):
        super().__init__()
        self.fc1 = ColumnParallelLinear(cfg.hidden, cfg.ffn, par.tp)
        self.fc2 = RowParallelLinear(cfg.ffn, cfg.hidden, par.tp, par.tp_comm, fwd)
        self.comm, self.bwd = par.tp_comm, bwd

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(copy_to_tp(x, self.comm, self.bwd))))


class Layer(nn.Module):
    """Post-LayerNorm BERT layer; its two all-reduces go through compressors when the plan says so."""

    def __init__(self, cfg: BertConfig, par: Parallel, plan: Plan, index: int):
        super().__init__()
        on = plan.active(index) and plan.tp_sites

        def site(j, bwd=False):
            return plan.build(cfg.hidden, 4 * index + j, bwd) if on and (not bwd or plan.backward) else None

        self.attn = Attention(cfg, par, site(0), site(0, True))
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.mlp = MLP(cfg, par, site(1), site(1, True))
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, bias):
        x = self.ln1(x + self.drop(self.attn(x, bias)))
        return self.ln2(x + self.drop(self.mlp(x)))


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.ln = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.drop = nn.Dropout(cfg.dropout)
        for e in (self.word, self.position, self.token_type):
            nn.init.normal_(e.weight, std=0.02)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        return self.drop(self.ln(self.word(ids) + self.position(pos) + self.token_type(torch.zeros_like(ids))))


class BertStage(nn.Module):
    """The layers of one pipeline stage (all of them when pp == 1), the embeddings on the first stage and
    a mean-pooling classifier on the last. Parameter names are those of the one-process model."""

    def __init__(self, cfg: BertConfig, par: Parallel, plan: Plan):
        super().__init__()
        self.cfg, self.par = cfg, par
        self.layer_ids = split_layers(cfg.layers, par.pp)[par.stage]
        self.embeddings = Embeddings(cfg) if par.first else None
        self.layers = nn.ModuleDict({str(i): Layer(cfg, par, plan, i) for i in self.layer_ids})
        self.classifier = nn.Linear(cfg.hidden, cfg.classes) if par.last else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.02)
            nn.init.zeros_(self.classifier.bias)
        self.cut_in = self._cut(plan, self.layer_ids[0]) if not par.first else None
        self.cut_out = self._cut(plan, self.layer_ids[-1] + 1) if not par.last else None

    def _cut(self, plan: Plan, layer: int) -> Cut:
        """The compressors in front of `layer`; both neighbours build them from the same seed."""
        if not (plan.active(layer) and plan.pp_cuts):
            return Cut()
        site = 10_000 + layer
        return Cut(
            plan.build(self.cfg.hidden, site), plan.build(self.cfg.hidden, site, True) if plan.backward else None
        )

    def cut_modules(self) -> nn.ModuleList:
        return nn.ModuleList(
            c
            for cut in (self.cut_in, self.cut_out)
            if cut is not None
            for c in (cut.forward, cut.backward)
            if c is not None
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """First stage: token ids -> hidden states; others: hidden states in. Last stage: logits out."""
        if self.embeddings is not None:
            x = self.embeddings(x)
        bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        for layer in self.layers.values():
            x = layer(x, bias)
        if self.classifier is None:
            return x
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.classifier((x * m).sum(1) / m.sum(1).clamp_min(1))


class BertModel(nn.Module):
    """A stage plus its pipeline-cut compressors, so that `parameters()` and `state_dict()` cover both."""

    def __init__(self, cfg: BertConfig, par: Parallel, plan: Plan):
        super().__init__()
        self.stage = BertStage(cfg, par, plan)
        self.cuts = self.stage.cut_modules()

    def forward(self, x, mask):
        return self.stage(x, mask)


# ---------------------------------------------------------------------------------------------------------
# Pretrained weights

_HF = {
    "embeddings.word_embeddings": "stage.embeddings.word",
    "embeddings.position_embeddings": "stage.embeddings.position",
    "embeddings.token_type_embeddings": "stage.embeddings.token_type",
    "embeddings.LayerNorm": "stage.embeddings.ln",
    "attention.self.query": "attn.q",
    "attention.self.key": "attn.k",
    "attention.self.value": "attn.v",
    "attention.output.dense": "attn.o",
    "attention.output.LayerNorm": "ln1",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "ln2",
}


def minilm_config(layers: int = 6, dropout: float = 0.1) -> BertConfig:
    """all-MiniLM-L6-v2's shape, keeping its first `layers` layers."""
    require(1 <= layers <= 6, f"all-MiniLM-L6-v2 has 6 layers; cannot keep {layers}")
    return BertConfig(vocab=30522, hidden=384, heads=12, ffn=1536, layers=layers, dropout=dropout)


def hf_config(path: str | Path, layers: int | None = None, dropout: float = 0.1, classes: int = 2) -> BertConfig:
    """The shape of a Hugging Face BERT checkpoint (its config.json), keeping its first `layers` layers."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(path))
    n = c.num_hidden_layers if layers is None else layers
    require(1 <= n <= c.num_hidden_layers, f"{path} has {c.num_hidden_layers} layers; cannot keep {n}")
    return BertConfig(
        vocab=c.vocab_size,
        hidden=c.hidden_size,
        heads=c.num_attention_heads,
        ffn=c.intermediate_size,
        layers=n,
        max_positions=c.max_position_embeddings,
        type_vocab=c.type_vocab_size,
        classes=classes,
        dropout=dropout,
        ln_eps=c.layer_norm_eps,
    )


def from_hf_state(state: dict[str, torch.Tensor], cfg: BertConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT state dict (`bert.` prefix or none) under this module's one-process names (first
    `cfg.layers` layers; the pooler and any task head are dropped: the classifier here mean-pools)."""
    out = {}
    for key, t in state.items():
        key = key.removeprefix("bert.")
        if "." not in key:
            continue
        name, leaf = key.rsplit(".", 1)
        leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
        if name.startswith("encoder.layer."):
            i, rest = name[len("encoder.layer.") :].split(".", 1)
            if int(i) < cfg.layers and rest in _HF:
                out[f"stage.layers.{i}.{_HF[rest]}.{leaf}"] = t
        elif name in _HF:
            out[f"{_HF[name]}.{leaf}"] = t
    return out


def load_hf_bert(path: str | Path, cfg: BertConfig) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face BERT directory (safetensors or PyTorch bin) under this module's names."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").exists():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"no model.safetensors or pytorch_model.bin in {path}")
    return from_hf_state(state, cfg)


def load_minilm(path: str | Path, cfg: BertConfig) -> dict[str, torch.Tensor]:
    """all-MiniLM-L6-v2's weights under this module's one-process names (first `cfg.layers` layers)."""
    return load_hf_bert(path, cfg)


@contextmanager
def uncompressed(model: BertModel) -> Iterator[None]:
    """Every tensor-parallel sum and pipeline cut of `model` plain while inside (its compressors set aside, then put
    back): the study's warm-up, which trains the first epochs uncompressed. Every rank must enter it at the same
    step, so that both ends of a cut agree on what travels."""
    saved: list[tuple[object, str, object]] = []

    def clear(owner: object, attr: str) -> None:
        if getattr(owner, attr, None) is not None:
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, None)

    for m in model.modules():
        if isinstance(m, RowParallelLinear):
            clear(m, "hook")
        if isinstance(m, (Attention, MLP)):
            clear(m, "bwd")
    for cut in (model.stage.cut_in, model.stage.cut_out):
        if cut is not None:
            clear(cut, "forward")
            clear(cut, "backward")
    try:
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)
