"""Private inference of a (student or exact) BERT classifier with CrypTen: two parties and a dealer.

Party 0 owns the model: it encrypts the weights. Party 1 owns the text: it tokenises it, turns the token ids
into one-hot rows and encrypts them with the attention mask. A third process, the dealer (CrypTen's trusted
third party, "TTP"), hands out multiplication triples. Only party 1 learns the logits.

Security model (what `audit.find_leaks` checks on real runs, and what the tests show it catches):

- Parties are semi-honest (they follow the protocol and try to learn from what they see), and the dealer
  colludes with neither party: with the triples' masks a party could unmask every opened value.
- The input owner learns the logits of its examples, and the public facts below; nothing else is revealed
  to it: every value opened during the protocol is a secret minus a fresh random mask.
- The model owner learns the public facts below and nothing about the text: not the tokens, not the true
  length of an example (only the padded length), not the logits.
- Public to both parties (and to the dealer, through the shapes of the triples it deals): the model's shape
  (`BertSpec`: vocabulary, hidden size, layers, heads, MLP width, positions, labels, which approximations),
  the padded length and the number of examples (with `length_bucket`, each batch's padded length: its longest
  example rounded up to a multiple of the bucket), and one power of four per LayerNorm (`ln_scales`, set by
  `calibrate_layer_norms` from the model owner's data; it tells the client roughly how large each LayerNorm's
  inputs get, about 2 bits per LayerNorm: disclosed here rather than hidden, because a secret scale would
  cost a multiplication per element of every LayerNorm).
- "TFP" (a trusted first party) lets party 0, the model owner, generate every triple: it could then unmask
  the client's input. It is allowed for timing only (`bench`); `private_inference` refuses it.
- A wrapped two-party truncation (probability |v| / 2^32 per product, see `truncation_risk`) makes an output
  wrong, not public.

The model is written as CrypTen modules whose forward reads like the PyTorch one; the nonlinearities are the
functions of `approximations`, the same code the plaintext student runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.distributed import ProcessFailed, run_processes
from common.errors import UserError

from . import audit, crypten_compat
from .approximations import ACTIVATIONS, NORMALISERS, tanh
from .convert import EXACT, Approximation, approximation_of

log = logging.getLogger(__name__)

MODEL_OWNER, INPUT_OWNER = 0, 1
PARTIES = 2


@dataclass(frozen=True)
class BertSpec:
    """The public architecture of a BERT classifier (what both parties may know)."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    num_labels: int
    layer_norm_eps: float = 1e-12
    approximation: Approximation = EXACT
    ln_scales: tuple[float, ...] = ()  # public per-LayerNorm variance scales (see `calibrate_layer_norms`)

    @classmethod
    def of(cls, model: nn.Module, approximation: Approximation | None = None) -> BertSpec:
        c = model.config
        approx = approximation or approximation_of(model)
        scales = tuple(getattr(model, "mpc_ln_scales", ())) or (1.0,) * (1 + 2 * c.num_hidden_layers)
        return cls(
            c.vocab_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
            c.max_position_embeddings,
            c.num_labels,
            c.layer_norm_eps,
            approx,
            scales,
        )


def _layer_norms(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "base_model", model)
    lns = [base.embeddings.LayerNorm]
    for layer in base.encoder.layer:
        lns += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
    return lns


@torch.no_grad()
def calibrate_layer_norms(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
) -> tuple[float, ...]:
    """Give each LayerNorm a public power-of-four scale: its largest input variance seen, over 32 or less.

    CrypTen's inv_sqrt is accurate only for moderate inputs: its initial guess turns negative above about 200
    (it then converges to -1/sqrt) and it is slow below 0.03, while a BERT's LayerNorm inputs range from
    variances near 0.002 (embeddings) to hundreds (outlier tokens after the first MLP). Dividing the centred
    input by the scale's square root (a power of two) before it is squared keeps every LayerNorm accurate.
    The model owner runs this on its own data; the scales are stored on the model (`mpc_ln_scales`) and
    are public.
    """
    largest: list[float] = []
    valid = attention_mask.bool()

    def hook(module, inputs, output):
        largest.append(float(inputs[0].float().var(-1, unbiased=False)[valid].max()))

    handles = [ln.register_forward_hook(hook) for ln in _layer_norms(model)]
    try:
        model.eval()(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    finally:
        for h in handles:
            h.remove()
    model.mpc_ln_scales = tuple(float(4.0 ** math.ceil(math.log(max(v, 1e-6) / LN_TARGET_MAX, 4))) for v in largest)
    return model.mpc_ln_scales


def export_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a transformers BERT classifier under the names `MPCBert` uses."""
    base = getattr(model, "base_model", model)
    if not hasattr(base, "embeddings") or not hasattr(model, "classifier") or getattr(base, "pooler", None) is None:
        raise UserError(f"{type(model).__name__} is not a BERT-family sequence classifier with a pooler")
    e = base.embeddings
    w = {
        "emb.word": e.word_embeddings.weight,
        "emb.pos": e.position_embeddings.weight,
        "emb.type0": e.token_type_embeddings.weight[0],
        "emb.type1": e.token_type_embeddings.weight[-1],
        "emb.ln.w": e.LayerNorm.weight,
        "emb.ln.b": e.LayerNorm.bias,
        "pool.w": base.pooler.dense.weight,
        "pool.b": base.pooler.dense.bias,
        "cls.w": model.classifier.weight,
        "cls.b": model.classifier.bias,
    }
    for i, layer in enumerate(base.encoder.layer):
        a = layer.attention
        parts = {
            "q": a.self.query,
            "k": a.self.key,
            "v": a.self.value,
            "o": a.output.dense,
            "ff1": layer.intermediate.dense,
            "ff2": layer.output.dense,
        }
        for n, lin in parts.items():
            w[f"l{i}.{n}.w"], w[f"l{i}.{n}.b"] = lin.weight, lin.bias
        w[f"l{i}.ln1.w"], w[f"l{i}.ln1.b"] = a.output.LayerNorm.weight, a.output.LayerNorm.bias
        w[f"l{i}.ln2.w"], w[f"l{i}.ln2.b"] = layer.output.LayerNorm.weight, layer.output.LayerNorm.bias
    return {k: v.detach().float().clone() for k, v in w.items()}


def weight_shapes(spec: BertSpec) -> dict[str, tuple[int, ...]]:
    h, f = spec.hidden, spec.intermediate
    s: dict[str, tuple[int, ...]] = {
        "emb.word": (spec.vocab_size, h),
        "emb.pos": (spec.max_positions, h),
        "emb.type0": (h,),
        "emb.type1": (h,),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
        "pool.w": (h, h),
        "pool.b": (h,),
        "cls.w": (spec.num_labels, h),
        "cls.b": (spec.num_labels,),
    }
    for i in range(spec.layers):
        for n, (o, inp) in {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "ff1": (f, h), "ff2": (h, f)}.items():
            s[f"l{i}.{n}.w"], s[f"l{i}.{n}.b"] = (o, inp), (o,)
        for n in ("ln1", "ln2"):
            s[f"l{i}.{n}.w"], s[f"l{i}.{n}.b"] = (h,), (h,)
    return s


# ---------------------------------------------------------------------------------------------------------
# The model as CrypTen modules (built after CrypTen is imported, inside a party)


LN_NR_ITERS = 5  # Newton steps of CrypTen's inv_sqrt in LayerNorm (CrypTen's default is 3)
LN_TARGET_MAX = 32.0  # the largest calibration variance lands here after scaling


def layer_norm(x, weight, bias, eps: float, scale: float = 1.0):
    """LayerNorm over the last dimension. Under MPC the variance reaching CrypTen's inv_sqrt (accurate only
    for moderate inputs) is divided by the public `scale` (a power of four). Where the inputs are large (they
    reach ~1000 after the first MLP) the centred input is divided by sqrt(`scale`) before it is squared, so no
    square is large enough to risk a wrapped truncation; normalising the scaled input gives the same result."""
    root = math.sqrt(scale)
    centred = x - x.mean(-1, keepdim=True)
    # dividing by an integer truncates at single precision; multiplying by one is exact
    if root >= 1:  # large inputs: scaled down before the square
        centred = centred / int(root)
        var, undo = centred.square().mean(-1, keepdim=True) + eps / scale, 1
    else:  # small inputs: their variance scaled up after
        var, undo = (centred.square().mean(-1, keepdim=True) + eps) * int(round(1 / scale)), int(round(1 / root))
    if isinstance(var, torch.Tensor):
        inv = var.rsqrt()
    else:
        with crypten_compat.crypten().cfg.temp_override({"functions.sqrt_nr_iters": LN_NR_ITERS}):
            inv = var.inv_sqrt()
    return centred * (inv * undo) * weight + bias


def build_mpc_bert(spec: BertSpec, weights: dict[str, torch.Tensor]):
    """`MPCBert` (a `crypten.nn.Module`) holding `weights` in plaintext; call `.encrypt(src=MODEL_OWNER)`."""
    nn_ = crypten_compat.crypten().nn
    approx = spec.approximation
    act, normalise = ACTIVATIONS[approx.activation], NORMALISERS[approx.softmax]

    def linear(prefix: str, scale: float = 1.0):
        w = weights[f"{prefix}.w"]
        m = nn_.Linear(w.shape[1], w.shape[0])
        m.set_parameter("weight", w * scale)
        m.set_parameter("bias", weights[f"{prefix}.b"] * scale)
        return m

    class LayerNorm(nn_.Module):
        def __init__(self, prefix: str, index: int):
            super().__init__()
            self.register_parameter("weight", weights[f"{prefix}.w"].clone())
            self.register_parameter("bias", weights[f"{prefix}.b"].clone())
            self.scale = spec.ln_scales[index] if spec.ln_scales else 1.0

        def forward(self, x):
            return layer_norm(x, self.weight, self.bias, spec.layer_norm_eps, self.scale)

    class Layer(nn_.Module):
        def __init__(self, i: int):
            super().__init__()
            # the model owner folds the attention scaling 1/sqrt(head size) into the query weights: one
            # multiplication less, and q k^T is 1/sqrt(head size) times smaller (see `truncation_risk`)
            self.q = linear(f"l{i}.q", 1.0 / math.sqrt(spec.hidden // spec.heads))
            self.k, self.v, self.o = (linear(f"l{i}.{n}") for n in "kvo")
            self.ff1, self.ff2 = linear(f"l{i}.ff1"), linear(f"l{i}.ff2")
            self.ln1, self.ln2 = LayerNorm(f"l{i}.ln1", 1 + 2 * i), LayerNorm(f"l{i}.ln2", 2 + 2 * i)

        def forward(self, h, mask):
            b, n, d = h.size()
            heads = spec.heads

            def split(x):
                return x.view(b, n, heads, d // heads).transpose(1, 2)

            q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
            scores = q.matmul(k.transpose(2, 3))
            ctx = normalise(scores, mask).matmul(v).transpose(1, 2).reshape(b, n, d)
            h = self.ln1(h + self.o(ctx))
            return self.ln2(h + self.ff2(act(self.ff1(h))))

    class MPCBert(nn_.Module):
        def __init__(self):
            super().__init__()
            for name in ("word", "pos", "type0", "type1"):
                self.register_parameter(name, weights[f"emb.{name}"].clone())
            self.emb_ln = LayerNorm("emb.ln", 0)
            self.layers = nn_.ModuleList([Layer(i) for i in range(spec.layers)])
            self.pool, self.cls = linear("pool"), linear("cls")

        def forward(self, one_hot, mask, types=None, on_layer=None):
            """one_hot: (batch, length, vocab) token rows; mask: (batch, length) 0/1; types: (batch, length)
            0/1 token types of sentence pairs (None: one sentence). Returns the logits."""
            n = one_hot.size(1)
            h = one_hot.matmul(self.word) + self.pos[:n] + self.type0
            if types is not None:
                h = h + types.unsqueeze(-1).matmul((self.type1 - self.type0).unsqueeze(0))
            h = self.emb_ln(h)
            for i, layer in enumerate(self.layers):
                if on_layer is not None:
                    on_layer(i, h)
                h = layer(h, mask)
            return self.cls(tanh(self.pool(h[:, 0])))

    return MPCBert()


# ---------------------------------------------------------------------------------------------------------
# Parties


@dataclass
class InferenceJob:
    spec: BertSpec
    weights_path: str  # read by the model owner only
    inputs_path: str  # read by the input owner only
    input_shape: tuple[int, int]  # (examples, padded length): public
    provider: str = "TTP"
    batch_size: int = 8
    timeout_s: float = 300.0
    audit: bool = False  # trace every value each process sends or learns (`audit`)
    keep_bytes: bool = False  # keep the bytes of every message too (searching them for secrets)
    hook: Callable[[PartyView], None] | None = None  # called by every party before each layer (tests)
    pairs: bool = False  # the input owner encrypts token type ids too (sentence pairs); public
    batch_lengths: tuple[int, ...] = ()  # each batch's padded length, chosen by the input owner; public


@dataclass
class PartyView:
    """What a hook sees in a party before a layer: the encrypted input rows, hidden state and model."""

    rank: int
    batch: int  # the batch's number
    layer: int
    inputs: Any  # encrypted one-hot rows (batch, length, vocab)
    hidden: Any  # encrypted hidden state entering the layer
    model: Any  # the encrypted MPCBert


@dataclass
class PartyReport:
    rank: int
    role: str
    logits: torch.Tensor | None = None
    wall_s: float = 0.0
    rounds: int = 0
    bytes: int = 0
    trace: audit.Trace | None = None

    @property
    def sent(self) -> list[bytes]:
        """The bytes of every message this party sent (kept with `keep_bytes`)."""
        return [s.payload for s in self.trace.sent if s.payload is not None] if self.trace else []


def _party(rank: int, nprocs: int, job: InferenceJob) -> PartyReport:
    port = os.environ["MASTER_PORT"]
    role = {MODEL_OWNER: "model owner", INPUT_OWNER: "input owner"}.get(rank, "dealer")
    trace = audit.Trace(keep_bytes=job.keep_bytes) if job.audit else None
    if trace is not None:
        crypten_compat.apply()
        audit.install(rank, trace)
    ct = crypten_compat.join_party(rank, PARTIES, f"tcp://127.0.0.1:{port}", job.provider, job.timeout_s)
    if ct is None:
        return PartyReport(rank, role, trace=trace)
    n, length = job.input_shape
    if rank == MODEL_OWNER:
        weights = torch.load(job.weights_path, weights_only=True)
    else:
        weights = {k: torch.zeros(s) for k, s in weight_shapes(job.spec).items()}
    if rank == INPUT_OWNER:
        inputs = torch.load(job.inputs_path, weights_only=True)
        ids, mask, types = inputs["input_ids"], inputs["attention_mask"].float(), inputs["token_type_ids"].float()
    else:
        ids, mask, types = torch.zeros(n, length, dtype=torch.long), torch.zeros(n, length), torch.zeros(n, length)
    model = build_mpc_bert(job.spec, weights).encrypt(src=MODEL_OWNER).eval()
    del weights

    ct.comm.get().reset_communication_stats()
    start = time.perf_counter()
    outs = []
    from tqdm import tqdm

    batches = range(0, n, job.batch_size)
    for lo in tqdm(batches, desc="private inference", disable=rank != INPUT_OWNER or len(batches) < 2):
        hi = min(lo + job.batch_size, n)
        cut = job.batch_lengths[lo // job.batch_size] if job.batch_lengths else length
        one_hot = (
            torch.nn.functional.one_hot(ids[lo:hi, :cut], job.spec.vocab_size).float()
            if rank == INPUT_OWNER
            else torch.zeros(hi - lo, cut, job.spec.vocab_size)
        )
        x = ct.cryptensor(one_hot, src=INPUT_OWNER)
        m = ct.cryptensor(mask[lo:hi, :cut], src=INPUT_OWNER)
        t = ct.cryptensor(types[lo:hi, :cut], src=INPUT_OWNER) if job.pairs else None
        on_layer = None
        if job.hook is not None:

            def on_layer(i, h, x=x, batch=lo // job.batch_size):
                job.hook(PartyView(rank, batch, i, x, h, model))

        logits = model(x, m, t, on_layer=on_layer)
        outs.append(logits.get_plain_text(dst=INPUT_OWNER))
    wall = time.perf_counter() - start
    stats = ct.comm.get().get_communication_stats()
    crypten_compat.leave_party()
    return PartyReport(
        rank,
        role,
        torch.cat(outs) if rank == INPUT_OWNER else None,
        wall,
        int(stats["rounds"]),
        int(stats["bytes"]),
        trace,
    )


@contextlib.contextmanager
def _job(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    provider: str,
    batch_size: int,
    timeout_s: float,
    length_bucket: int | None = None,
    **options: Any,
):
    """The job every party gets, its weights file (read by the model owner) and its inputs file (read by the
    input owner) in a temporary directory that lives as long as the context."""
    with tempfile.TemporaryDirectory(prefix="mpcformer_") as tmp:
        weights_path, inputs_path = str(Path(tmp) / "weights.pt"), str(Path(tmp) / "inputs.pt")
        torch.save(export_weights(model), weights_path)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        torch.save(
            {"input_ids": input_ids.long(), "attention_mask": attention_mask.long(), "token_type_ids": types.long()},
            inputs_path,
        )
        yield InferenceJob(
            BertSpec.of(model),
            weights_path,
            inputs_path,
            tuple(input_ids.shape),
            provider,
            batch_size,
            timeout_s,
            pairs=token_type_ids is not None,
            batch_lengths=batch_lengths(attention_mask, batch_size, length_bucket),
            **options,
        )


def batch_lengths(attention_mask: torch.Tensor, batch_size: int, bucket: int | None) -> tuple[int, ...]:
    """Each batch's padded length: its longest example rounded up to a multiple of `bucket`, at most the full
    length (() without a bucket: every batch keeps the full padded length). The input owner computes it; it is
    public (the shapes of what it encrypts), so a coarser bucket discloses less about the lengths of its texts."""
    if not bucket:
        return ()
    full = attention_mask.shape[1]
    n = len(attention_mask)
    longest = [int(attention_mask[lo : lo + batch_size].sum(1).max()) for lo in range(0, n, batch_size)]
    return tuple(min(full, -(-max(k, 1) // bucket) * bucket) for k in longest)


@dataclass
class PrivateResult:
    logits: torch.Tensor  # what party 1 learned
    reports: list[PartyReport]
    provider: str

    @property
    def wall_s(self) -> float:
        return max(r.wall_s for r in self.reports if r.role != "dealer")

    def party(self, rank: int) -> PartyReport:
        return self.reports[rank]

    def leaks(self) -> list[str]:
        """What the run let a party learn beyond the protocol (`audit.find_leaks`); needs `audit=True`."""
        if any(r.trace is None for r in self.reports):
            raise ValueError("run private_inference with audit=True to check it for leaks")
        return audit.find_leaks({r.rank: r.trace for r in self.reports}, self.logits, self.provider)


def private_inference(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    provider: str = "TTP",
    batch_size: int = 8,
    timeout_s: float = 300.0,
    audit: bool = False,
    keep_bytes: bool = False,
    hook: Callable[[PartyView], None] | None = None,
    length_bucket: int | None = None,
) -> PrivateResult:
    """Run `model` (a converted student or an exact BERT classifier) under MPC on padded token ids.

    With `length_bucket` each batch is cut to its longest example rounded up to a multiple of it (public, like
    the padded length): a run costs about its tokens, not the padding's; sort the examples by length first to
    make the most of it. The logits do not depend on it (padded keys are masked either way).

    Spawns the model owner, the input owner and the dealer; each reads only what it owns (the security model
    is in this module's docstring). With `audit` every value a party sends or learns is traced and
    `result.leaks()` lists what went where it should not. `hook(view)` runs in every party before each layer.
    A party that fails or disappears ends the others within `timeout_s`; that is reported as a UserError.
    """
    if provider not in crypten_compat.PROVIDERS:
        raise UserError(f"unknown provider {provider!r}; choose one of {', '.join(crypten_compat.PROVIDERS)}")
    if provider != "TTP":
        raise UserError(
            f"provider {provider} lets the model owner see the input: use it for timing only "
            "(mpcformer.bench), private inference needs TTP"
        )
    spec = BertSpec.of(model)
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise UserError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "must both be (examples, length)"
        )
    if input_ids.shape[1] > spec.max_positions:
        raise UserError(
            f"sequence length {input_ids.shape[1]} is longer than the model allows ({spec.max_positions} positions)"
        )
    if int(input_ids.max()) >= spec.vocab_size or int(input_ids.min()) < 0:
        raise UserError(f"token ids outside the model's vocabulary of {spec.vocab_size}: wrong tokenizer?")
    nprocs = PARTIES + (provider == "TTP")
    if length_bucket is not None and length_bucket < 1:
        raise UserError(f"length_bucket must be a positive number of tokens or null, got {length_bucket}")
    options = {"audit": audit, "keep_bytes": keep_bytes, "hook": hook, "length_bucket": length_bucket}
    with _job(model, input_ids, attention_mask, token_type_ids, provider, batch_size, timeout_s, **options) as job:
        try:
            reports = run_processes(
                _party, nprocs, args=(job,), init_group=False, timeout_s=timeout_s * 2 + 60, grace_s=timeout_s + 30
            )
        except ProcessFailed as exc:
            raise UserError(f"private inference failed: a party stopped ({exc})") from exc
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"private inference failed: a party stopped or lost its peers ({first})") from exc
    return PrivateResult(reports[INPUT_OWNER].logits, reports, provider)


def check_against_plaintext(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mpc_logits: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    plain_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """Largest logit error and label agreement of MPC logits against the plaintext model's (`plain_logits` when
    the caller already has them, else one forward pass here)."""
    if plain_logits is None:
        with torch.no_grad():
            plain_logits = model.eval()(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
    plain = plain_logits.float()
    return {
        "max_abs_logit_error": float((plain - mpc_logits).abs().max()),
        "label_agreement": float((plain.argmax(-1) == mpc_logits.argmax(-1)).float().mean()),
    }


# ---------------------------------------------------------------------------------------------------------
# Truncation risk: the chance that a fixed-point truncation wraps around the ring


RING_BITS = 64


def _risk_party(rank: int, nprocs: int, job: InferenceJob) -> dict[str, float]:
    """One CrypTen party alone (world size 1, so every share is the whole value): run the model and, at every
    truncation, add |share| / 2^64 (the chance that two-party local truncation of that element wraps) to the
    function of `approximations` or `private_inference` that asked for it."""
    import traceback

    ct = crypten_compat.join_party(
        0, 1, f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}", "TFP", job.timeout_s, verbose=False
    )
    from crypten.mpc.primitives.arithmetic import ArithmeticSharedTensor

    risk: dict[str, float] = {}
    original = ArithmeticSharedTensor.div_
    ours = str(Path(__file__).parent)

    def div_(self, y):
        if (
            isinstance(y, int)
            or (isinstance(y, float) and int(y) == y)
            or (torch.is_tensor(y) and not y.is_floating_point())
        ):
            stack = traceback.extract_stack(limit=30)[:-1]
            mine = [
                f"{f.name}: {f.line.strip()}" if f.name == "forward" else f.name
                for f in stack
                if f.filename.startswith(ours)
            ]
            where = mine[-1] if mine else "?"
            if not stack[-1].filename.startswith(ours):
                theirs = [
                    f.name
                    for f in stack
                    if "crypten" in f.filename
                    and f.name
                    not in (
                        "div_",
                        "div",
                        "mul",
                        "mul_",
                        "_arithmetic_function",
                        "_arithmetic_function_",
                        "__mul__",
                        "__imul__",
                        "square",
                    )
                ]
                where += f">{theirs[-1]}" if theirs else ""
            risk[where] = risk.get(where, 0.0) + float(self.share.abs().double().sum()) / 2.0**RING_BITS
        return original(self, y)

    weights = torch.load(job.weights_path, weights_only=True)
    inputs = torch.load(job.inputs_path, weights_only=True)
    model = build_mpc_bert(job.spec, weights).encrypt(src=0).eval()
    ArithmeticSharedTensor.div_ = div_
    try:
        ids, mask, types = inputs["input_ids"], inputs["attention_mask"].float(), inputs["token_type_ids"].float()
        for lo in range(0, len(ids), job.batch_size):
            hi = min(lo + job.batch_size, len(ids))
            x = ct.cryptensor(torch.nn.functional.one_hot(ids[lo:hi], job.spec.vocab_size).float())
            model(x, ct.cryptensor(mask[lo:hi]), ct.cryptensor(types[lo:hi]) if job.pairs else None)
    finally:
        ArithmeticSharedTensor.div_ = original
        crypten_compat.leave_party()
    return risk


def truncation_risk(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    batch_size: int = 8,
    timeout_s: float = 600.0,
) -> dict[str, float]:
    """The expected number of wrapped truncations when `model` runs under two-party CrypTen on these inputs,
    per place: a function of `approximations` (e.g. 'two_quad', 'layer_norm>square_': where it called CrypTen)
    or a line of the model's forward ('forward: scores = q.matmul(k.transpose(2, 3))>matmul').

    CrypTen truncates a product with two parties by dividing each share locally. That is off by about 2^48
    (2^32 in real units: a logit of 1e9) when the shares wrap around the 64-bit ring, which happens with
    probability |x| / 2^64 for an element whose double-precision fixed-point value is x: a rare event per
    element, a frequent one over the millions of products of a Transformer when values reach thousands.
    Computed exactly from the model's MPC forward, run by a single CrypTen party on the (plaintext) inputs.
    """
    with _job(model, input_ids, attention_mask, token_type_ids, "TFP", batch_size, timeout_s) as job:
        (risk,) = run_processes(_risk_party, 1, args=(job,), init_group=False, timeout_s=timeout_s)
    return dict(sorted(risk.items(), key=lambda kv: -kv[1]))
