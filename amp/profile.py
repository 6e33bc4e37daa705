"""Profile your own model for the planner: `python -m amp.profile --model gpt2 --set n_layer=4 --out p.json`.

Measures the forward and backward time of every layer of a model on the local device (CUDA when present,
else CPU) at micro-batch sizes 1..N, the bytes each layer keeps for its backward (counted from the tensors
autograd saves), its parameters and output size, and -- where more than one CUDA device exists -- all-reduce
times across 2, 4, ... devices, from which it writes tensor-parallel entries (compute / tp + the four
all-reduces of a Megatron block). The result is the planner's profile format (`amp-profile/1`):

    plan a cluster:  model: {type: profile, path: p.json}  in a setup YAML, then
                     python -m reproduce.amp plan.setup=my_cluster.yaml plan.profile=p.json

Models: a `transformers` GPT-2, BERT or Llama-style config (`--model gpt2|bert|llama` with `--set key=value`
overrides, or a config.json / model folder), or any list of blocks (`--blocks package.module:function`,
returning an nn.Sequential or a list of modules, with `--input-shape` per sample). Profiles taken on several
machines (or GPU types) combine with `--merge a.json b.json --out both.json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from common.errors import UserError, exit_on_user_error, require

log = logging.getLogger(__name__)

FORMAT = "amp-profile/1"
FAMILIES = ("gpt2", "bert", "llama")


# ----------------------------------------------------------------------------------------------- models
@dataclass
class Blocks:
    """A model cut into the units a pipeline may split between, with how to make the first one's input."""

    name: str
    layers: list[nn.Module]
    names: list[str]
    kinds: list[str]
    make_input: Callable[[int], torch.Tensor]  # micro-batch size -> input of the first layer
    hidden: int = 0
    seq: int = 0
    heads: int = 0
    vocab: int = 0
    tied: bool = False  # first and last layer share their weights (tied embeddings)


class _First(nn.Module):
    """Output of a module that returns a tuple (Hugging Face blocks)."""

    def __init__(self, block: nn.Module, **kwargs):
        super().__init__()
        self.block, self.kwargs = block, kwargs

    def forward(self, x):
        out = self.block(x, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


class _GPT2Embed(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.wte, self.wpe, self.drop = m.transformer.wte, m.transformer.wpe, m.transformer.drop

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.wte(ids) + self.wpe(pos))


class _Head(nn.Module):
    def __init__(self, norm: nn.Module, head: nn.Module):
        super().__init__()
        self.norm, self.head = norm, head

    def forward(self, x):
        return self.head(self.norm(x))


class _Llama(nn.Module):
    """A Llama decoder layer with its rotary embedding computed for the sequence (as LlamaModel does)."""

    def __init__(self, layer: nn.Module, rotary: nn.Module):
        super().__init__()
        self.layer, self.rotary = layer, rotary

    def forward(self, x):
        pos = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        out = self.layer(x, position_embeddings=self.rotary(x, pos), attention_mask=None, position_ids=pos)
        return out[0] if isinstance(out, (tuple, list)) else out


def _config(model: str, overrides: dict[str, str]):
    import transformers

    path = Path(model)
    if model in FAMILIES:
        cls = {"gpt2": transformers.GPT2Config, "bert": transformers.BertConfig, "llama": transformers.LlamaConfig}[
            model
        ]
        cfg = cls()
    elif path.exists():
        file = path / "config.json" if path.is_dir() else path
        require(file.is_file(), f"no config.json in {path}")
        try:
            cfg = transformers.AutoConfig.from_pretrained(str(file.parent if file.name == "config.json" else file))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read a transformers config from {path}: {str(exc).splitlines()[0]}") from None
    else:
        raise UserError(
            f"unknown model {model!r}: give one of {', '.join(FAMILIES)}, a config.json or a model "
            "folder, or --blocks module:function"
        )
    for key, value in overrides.items():
        require(hasattr(cfg, key), f"config {type(cfg).__name__} has no field {key!r}")
        cur = getattr(cfg, key)
        try:
            setattr(
                cfg,
                key,
                type(cur)(value)
                if cur is not None and not isinstance(cur, bool)
                else (value.lower() in ("1", "true", "yes") if isinstance(cur, bool) else value),
            )
        except ValueError:
            raise UserError(f"bad value {value!r} for {key} (expected {type(cur).__name__})") from None
    if hasattr(cfg, "_attn_implementation"):
        cfg._attn_implementation = "eager" if model == "bert" else "sdpa"
    return cfg


def transformers_blocks(model: str, overrides: dict[str, str] | None = None, seq: int | None = None) -> Blocks:
    """A `transformers` model (random weights) as embedding, blocks and head."""
    import transformers

    cfg = _config(model, overrides or {})
    family = cfg.model_type
    torch.manual_seed(0)
    if family == "gpt2":
        m = transformers.GPT2LMHeadModel(cfg)
        s = seq or cfg.n_positions
        layers = [_GPT2Embed(m), *[_First(b) for b in m.transformer.h], _Head(m.transformer.ln_f, m.lm_head)]
        hidden, heads, vocab = cfg.n_embd, cfg.n_head, cfg.vocab_size
        tied = m.lm_head.weight is m.transformer.wte.weight
    elif family == "bert":
        m = transformers.BertForMaskedLM(cfg)
        s = seq or cfg.max_position_embeddings
        layers = [_First(m.bert.embeddings), *[_First(b) for b in m.bert.encoder.layer], _Head(nn.Identity(), m.cls)]
        hidden, heads, vocab = cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size
        tied = m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight
    elif family == "llama":
        m = transformers.LlamaForCausalLM(cfg)
        s = seq or min(cfg.max_position_embeddings, 2048)
        rot = m.model.rotary_emb
        layers = [m.model.embed_tokens, *[_Llama(b, rot) for b in m.model.layers], _Head(m.model.norm, m.lm_head)]
        hidden, heads, vocab = cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size
        tied = m.lm_head.weight is m.model.embed_tokens.weight
    else:
        raise UserError(f"model type {family!r} is not supported; use a {', '.join(FAMILIES)} config or --blocks")
    n = len(layers) - 2
    names = ["embedding", *[f"block{i}" for i in range(n)], "head"]
    kinds = ["embedding", *["transformer"] * n, "head"]
    return Blocks(
        f"{family}-{n}x{hidden}",
        layers,
        names,
        kinds,
        lambda mbs: torch.randint(0, vocab, (mbs, s)),
        hidden,
        s,
        heads,
        vocab,
        tied,
    )


def sequential_blocks(spec: str, input_shape: Sequence[int]) -> Blocks:
    """`package.module:function` returning an nn.Sequential or a list of modules; inputs are random floats of
    shape (micro-batch, *input_shape)."""
    mod_name, _, attr = spec.partition(":")
    require(bool(mod_name and attr), f"--blocks wants module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"cannot load {spec}: {exc}") from None
    obj = fn() if callable(fn) and not isinstance(fn, nn.Module) else fn
    layers = list(obj) if isinstance(obj, (nn.Sequential, nn.ModuleList, list, tuple)) else None
    require(
        bool(layers) and all(isinstance(l, nn.Module) for l in layers),
        f"{spec} must give an nn.Sequential or a list of modules",
    )
    require(len(input_shape) >= 1, "--input-shape is needed with --blocks (per-sample shape, e.g. 64)")
    return Blocks(
        attr,
        layers,
        [f"{i}:{type(l).__name__}" for i, l in enumerate(layers)],
        ["block"] * len(layers),
        lambda mbs: torch.randn(mbs, *input_shape),
    )


# ------------------------------------------------------------------------------------------ measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    return float(sorted(ts)[len(ts) // 2])


def _backward_time(
    layer: nn.Module, inp: torch.Tensor, grad: torch.Tensor | None, device: torch.device, repeats: int
) -> float:
    """Median seconds of the layer's backward alone (each repeat builds its graph untimed first)."""
    ts = []
    for i in range(repeats + 1):
        out = layer(inp)
        _sync(device)
        t0 = time.perf_counter()
        out.backward(grad)
        _sync(device)
        if i:  # the first is a warm-up
            ts.append(time.perf_counter() - t0)
    return float(sorted(ts)[len(ts) // 2])


def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The layer's output and the bytes autograd keeps for its backward (each storage once, parameters not
    counted)."""
    params = {p.data_ptr() for p in layer.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return out, sum(seen.values())


def measure_blocks(blocks: Blocks, max_mbs: int = 4, repeats: int = 3, device: str | None = None) -> dict:
    """Forward and backward seconds per layer for micro-batch sizes 1..max_mbs, and each layer's sizes."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    require(dev.type != "cuda" or torch.cuda.is_available(), "no CUDA device here")
    layers = [l.to(dev).train() for l in blocks.layers]
    times: dict[str, dict[str, list[float]]] = {}
    info = []
    for mbs in range(1, max_mbs + 1):
        x = blocks.make_input(mbs).to(dev)
        fwd, bwd = [], []
        for i, layer in enumerate(layers):
            inp = x.detach().requires_grad_(x.is_floating_point())
            out, saved = _saved_bytes(layer, inp)
            grad = torch.randn_like(out) if out.is_floating_point() else None
            fwd.append(_median_time(lambda layer=layer, inp=inp: layer(inp), dev, repeats))
            bwd.append(_backward_time(layer, inp, grad, dev, repeats))
            layer.zero_grad(set_to_none=True)
            if mbs == 1:
                shared = blocks.tied and i in (0, len(layers) - 1)
                info.append(
                    {
                        "name": blocks.names[i],
                        "kind": blocks.kinds[i],
                        "params": sum(p.numel() for p in layer.parameters()),
                        "out_elems": out.numel(),
                        "act_bytes": saved,
                        "shared": "embedding" if shared else "",
                    }
                )
            x = out.detach()
        times[str(mbs)] = {"forward": fwd, "backward": bwd}
        log.info("micro-batch %d: %d layers, forward %.4f s, backward %.4f s", mbs, len(layers), sum(fwd), sum(bwd))
    return {"device": str(dev), "times": times, "layers": info}


def measure_allreduce(sizes: Sequence[int], repeats: int = 5) -> dict[str, dict[str, float]]:
    """Seconds of an fp16 all-reduce of each element count across 2, 4, ... local CUDA devices (NCCL from one
    process); empty with fewer than two devices."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out: dict[str, dict[str, float]] = {}
    k = 2
    while k <= n:
        out[str(k)] = {}
        for size in sizes:
            bufs = [torch.ones(int(size), dtype=torch.float16, device=f"cuda:{d}") for d in range(k)]

            def ar(bufs=bufs, k=k):
                torch.cuda.nccl.all_reduce(bufs)
                for d in range(k):
                    torch.cuda.synchronize(d)

            out[str(k)][str(int(size))] = _median_time(ar, torch.device("cuda:0"), repeats)
        k *= 2
    return out


def profile_document(
    blocks: Blocks, gpu: str, max_mbs: int, repeats: int = 3, device: str | None = None, memory_gb: float | None = None
) -> dict:
    """The planner's profile of `blocks` on this machine, named `gpu`."""
    m = measure_blocks(blocks, max_mbs, repeats, device)
    dev = torch.device(m["device"])
    if memory_gb is None:
        memory_gb = (
            torch.cuda.get_device_properties(dev).total_memory / 1e9 if dev.type == "cuda" else _host_memory_gb()
        )
    per_tp = {"1": m["times"]}
    sizes = sorted({b * blocks.seq * blocks.hidden for b in range(1, max_mbs + 1)}) if blocks.hidden else []
    allreduce = measure_allreduce(sizes) if sizes else {}
    for tp, by_size in allreduce.items():  # Megatron block: compute / tp, two all-reduces forward, two backward
        per_tp[tp] = {}
        for mbs, t in m["times"].items():
            ar = by_size[str(int(mbs) * blocks.seq * blocks.hidden)]
            is_block = [k == "transformer" for k in blocks.kinds]
            per_tp[tp][mbs] = {
                k: [f / int(tp) + (2 * ar if b else 0.0) for f, b in zip(t[k], is_block)]
                for k in ("forward", "backward")
            }
    return {
        "format": FORMAT,
        "model": {
            "name": blocks.name,
            "hidden": blocks.hidden,
            "seq": blocks.seq,
            "heads": blocks.heads,
            "vocab": blocks.vocab,
            "layers": m["layers"],
        },
        "gpus": {gpu: {"memory_gb": memory_gb, "device": m["device"], "times": per_tp}},
        "tp_comm_included": bool(allreduce),
        "allreduce_s": allreduce,
        "source": f"python -m amp.profile on {m['device']} ({time.strftime('%Y-%m-%d')})",
    }


def _host_memory_gb() -> float:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


def merge(docs: Sequence[dict]) -> dict:
    """One profile from several (the same model profiled on different GPU types)."""
    require(len(docs) >= 1, "nothing to merge")
    base = json.loads(json.dumps(docs[0]))
    for d in docs[1:]:
        require(d.get("format") == FORMAT, "can only merge amp-profile/1 files")
        require(
            [l["name"] for l in d["model"]["layers"]] == [l["name"] for l in base["model"]["layers"]],
            "cannot merge profiles of different models",
        )
        base["gpus"].update(d["gpus"])
        base["tp_comm_included"] = base["tp_comm_included"] and d["tp_comm_included"]
    return base


def read(path: str | Path) -> dict:
    p = Path(path)
    require(p.is_file(), f"no profile file {p}")
    try:
        doc = json.loads(p.read_text())
    except ValueError as exc:
        raise UserError(f"bad profile file {p}: {exc}") from None
    return doc


# ------------------------------------------------------------------------------------------------- CLI
def _parse_set(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        key, eq, value = it.partition("=")
        require(bool(eq and key), f"--set wants key=value, got {it!r}")
        out[key] = value
    return out


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=f"{', '.join(FAMILIES)}, a transformers config.json or a model folder")
    src.add_argument("--blocks", help="module:function giving an nn.Sequential or a list of modules")
    src.add_argument("--merge", nargs="+", help="profile files to combine into --out")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. n_layer=4 n_embd=128")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default: the config's)")
    ap.add_argument("--input-shape", type=int, nargs="*", default=[], help="per-sample input shape for --blocks")
    ap.add_argument("--max-mbs", type=int, default=4, help="profile micro-batch sizes 1..N")
    ap.add_argument("--gpu", default="local", help="the GPU type name to file the times under")
    ap.add_argument("--memory-gb", type=float, default=None, help="memory per device (default: the device's)")
    ap.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when present)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", required=True, help="where to write the profile JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    require(out.parent.is_dir(), f"output folder {out.parent} does not exist")
    if args.merge:
        doc = merge([read(p) for p in args.merge])
    else:
        require(args.max_mbs >= 1, f"--max-mbs must be >= 1, got {args.max_mbs}")
        if args.threads:
            torch.set_num_threads(args.threads)
        blocks = (
            transformers_blocks(args.model, _parse_set(args.set), args.seq)
            if args.model
            else sequential_blocks(args.blocks, args.input_shape)
        )
        doc = profile_document(blocks, args.gpu, args.max_mbs, args.repeats, args.device, args.memory_gb)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    print(f"wrote {out}: {len(doc['model']['layers'])} layers, GPU types {', '.join(doc['gpus'])}")


if __name__ == "__main__":
    main()
