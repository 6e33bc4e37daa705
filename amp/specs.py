"""What the planner reasons about: models as lists of layers, GPU types, nodes, clusters and strategies.

Everything is a plain dataclass, readable from YAML (`load_setup`), and validated on construction so that a
bad spec is one `UserError` line instead of a wrong plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import UserError, require

DATA_DIR = Path(__file__).parent / "data"
SETUPS_DIR = DATA_DIR / "setups"


# ----------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Layer:
    """One unit a pipeline cut may fall after; sizes are per sample (multiply by the micro-batch size).

    `act_fixed`/`act_split` are the bytes stored for backward (the `act_split` part is divided by the
    tensor-parallel degree); `out_elems` is what a pipeline cut after this layer sends forward (and its
    gradient back). Layers with the same non-empty `shared` key hold one copy of their parameters per stage
    (tied input/output embeddings).
    """

    name: str
    kind: str  # embedding | transformer | head | noop | stem
    params: float = 0.0
    flops: float = 0.0
    out_elems: float = 0.0
    out_split: bool = False  # the output is split across the tensor-parallel group (vocab-parallel logits)
    act_fixed: float = 0.0
    act_split: float = 0.0
    shared: str = ""
    released_out_elems: float | None = None  # the released model's (simplified) cut volume, when it differs

    def act_bytes(self, tp: int) -> float:
        return self.act_fixed + self.act_split / tp


@dataclass(frozen=True)
class Model:
    """A model as the planner sees it. `blocks` is the number of repeated blocks (what the released code
    calls num_layers); `uniform_pad` says how many leading/trailing layers the released uniform split
    (used when there is one micro-batch) adds to the first/last stage."""

    name: str
    layers: tuple[Layer, ...]
    blocks: int
    hidden: int
    seq: int
    heads: int
    vocab: int = 0
    uniform_pad: tuple[int, int] = (0, 0)
    profile_name: str = ""  # which published profile matches this model (gpt2, transgan)

    def __post_init__(self):
        require(len(self.layers) >= 1, f"model {self.name} has no layers")
        require(self.blocks >= 1, f"model {self.name}: blocks must be >= 1, got {self.blocks}")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def params(self) -> float:
        seen, total = set(), 0.0
        for layer in self.layers:
            if layer.shared and layer.shared in seen:
                continue
            seen.add(layer.shared) if layer.shared else None
            total += layer.params
        return total


def _transformer_layer(
    i: int, h: int, s: int, a: int, tokens: int | None = None, released_out: float | None = None
) -> Layer:
    """A pre-LN transformer block; `s` is the attention span (sequence or window), `tokens` all tokens of a
    sample. Activation bytes follow Korthikanti et al. 2022 (fp16, no recomputation): t*h*(10 + 24/tp) plus
    5*a*s*t/tp for the attention scores, softmax and dropout mask."""
    t = tokens or s
    return Layer(
        name=f"block{i}",
        kind="transformer",
        params=12.0 * h * h,
        flops=24.0 * t * h * h + 4.0 * t * s * h,
        out_elems=float(t * h),
        act_fixed=10.0 * t * h,
        act_split=24.0 * t * h + 5.0 * a * s * t,
        released_out_elems=released_out,
    )


def transformer(
    name: str, hidden: int, layers: int, heads: int, seq: int, vocab: int, tie_embeddings: bool = True
) -> Model:
    """Any GPT-style decoder from its sizes, split as the released AMP code split GPT-2: embedding, a no-op,
    the blocks, two no-ops, the (tied) output embedding and a no-op."""
    require(
        hidden > 0 and layers > 0 and heads > 0 and seq > 0 and vocab > 0,
        f"transformer {name}: sizes must be positive (hidden={hidden}, layers={layers}, heads={heads}, "
        f"seq={seq}, vocab={vocab})",
    )
    require(hidden % heads == 0, f"transformer {name}: hidden {hidden} is not divisible by heads {heads}")
    h, s, v = hidden, seq, vocab
    tie = "embedding" if tie_embeddings else ""
    emb = Layer(
        "embedding", "embedding", params=float(h * v), out_elems=float(s * h), act_fixed=3.0 * s * h, shared=tie
    )
    head = Layer(
        "output_embedding",
        "head",
        params=float(h * v),
        flops=2.0 * s * h * v,
        out_elems=float(s * v),
        out_split=True,
        act_split=6.0 * s * v,
        shared=tie,
    )
    noop = Layer("noop", "noop")
    blocks = [_transformer_layer(i, h, s, heads) for i in range(layers)]
    seq_layers = [emb, noop, *blocks, noop, noop, head, noop]
    # a no-op passes on the activation of the layer before it
    fixed = []
    for layer in seq_layers:
        if layer.kind == "noop" and fixed:
            prev = fixed[-1]
            layer = Layer("noop", "noop", out_elems=prev.out_elems, out_split=prev.out_split)
        fixed.append(layer)
    return Model(
        name=name,
        layers=tuple(fixed),
        blocks=layers,
        hidden=h,
        seq=s,
        heads=heads,
        vocab=v,
        uniform_pad=(2, 4),
        profile_name="gpt2",
    )


def gpt2(hidden: int = 1024, layers: int = 24, heads: int = 16, seq: int = 1024, vocab: int = 52256) -> Model:
    """GPT-2 as in the AMP paper (24 layers, hidden 1024, sequence 1024, vocabulary 52,256)."""
    return transformer("gpt2", hidden, layers, heads, seq, vocab)


def transgan(hidden: int = 1024, depth: tuple[int, int] = (12, 12), bottom: int = 9, heads: int = 4) -> Model:
    """The TransGAN generator of the AMP paper's heterogeneous-model experiment, as the released code
    planned it: a stem, `depth[0]` blocks at hidden `hidden` on bottom x bottom tokens, and `depth[1]` blocks at
    hidden/64 on (32 * bottom)^2 tokens in 256 windows of 4 * bottom^2 (the lambda layers in between are
    folded away, as the released planner did). The released model sends hidden * bottom^2 elements at every
    cut; that simplification is kept in `released_out_elems`."""
    h, b = hidden, bottom
    rel = float(h * b * b)
    stem = Layer(
        "stem", "stem", params=0.0, out_elems=float(b * b * h), act_fixed=2.0 * b * b * h, released_out_elems=rel
    )
    low = [_transformer_layer(i, h, b * b, heads, released_out=rel) for i in range(depth[0])]
    hw = h // 64
    win, tokens = 4 * b * b, (32 * b) ** 2
    high = [_transformer_layer(depth[0] + i, hw, win, heads, tokens=tokens, released_out=rel) for i in range(depth[1])]
    return Model(
        name="transgan",
        layers=(stem, *low, *high),
        blocks=sum(depth),
        hidden=h,
        seq=b * b,
        heads=heads,
        uniform_pad=(0, 1),
        profile_name="transgan",
    )


def from_profile(path: str | Path, name: str | None = None) -> Model:
    """The model a `python -m amp.profile` file describes (its layers' parameters, output sizes and the bytes
    each keeps for backward, as measured); also makes the file's GPU types known."""
    import json

    p = Path(path)
    require(p.is_file(), f"no profile file {p}")
    try:
        doc = json.loads(p.read_text())
        require(doc.get("format") == "amp-profile/1", f"{p} is not an amp-profile/1 file (python -m amp.profile)")
        for gpu, entry in doc["gpus"].items():
            if gpu not in GPU_TYPES:
                register_gpu(GPUType(gpu, float(entry["memory_gb"])))
        m = doc["model"]
        layers = []
        for l in m["layers"]:
            act = float(l["act_bytes"])
            split = act * 24.0 / 34.0 if l["kind"] == "transformer" else 0.0  # Korthikanti: 24 of 34 sh split
            layers.append(
                Layer(
                    str(l["name"]),
                    str(l["kind"]),
                    params=float(l["params"]),
                    out_elems=float(l["out_elems"]),
                    out_split=l["kind"] == "head",
                    act_fixed=act - split,
                    act_split=split,
                    shared=str(l.get("shared", "")),
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"bad profile file {p}: {exc}") from None
    blocks = sum(1 for l in layers if l.kind == "transformer") or len(layers)
    return Model(
        name=name or str(m.get("name", p.stem)),
        layers=tuple(layers),
        blocks=blocks,
        hidden=int(m.get("hidden") or 1),
        seq=int(m.get("seq") or 1),
        heads=int(m.get("heads") or 1),
        vocab=int(m.get("vocab") or 0),
        profile_name=str(p),
    )


MODEL_BUILDERS = {"gpt2": gpt2, "transgan": transgan, "transformer": transformer, "profile": from_profile}


def build_model(spec: dict[str, Any]) -> Model:
    spec = dict(spec)
    kind = spec.pop("type", None)
    require(kind in MODEL_BUILDERS, f"unknown model type {kind!r}; choose one of {', '.join(MODEL_BUILDERS)}")
    if kind == "transformer":
        spec.setdefault("name", "transformer")
    if "depth" in spec:
        spec["depth"] = tuple(spec["depth"])
    try:
        return MODEL_BUILDERS[kind](**spec)
    except TypeError as exc:
        raise UserError(f"bad {kind} model spec: {exc}") from None


# -------------------------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class GPUType:
    """A GPU generation: its memory, peak fp16 throughput for profiles estimated from FLOPs, and memory
    bandwidth (GB/s; 0 = unknown) for scaling one type's per-sample cost to another's
    (`Profiles.layer_times`)."""

    name: str
    memory_gb: float
    tflops: float = 0.0
    mem_gbs: float = 0.0

    def __post_init__(self):
        require(self.memory_gb > 0, f"GPU type {self.name}: memory_gb must be > 0, got {self.memory_gb}")


GPU_TYPES: dict[str, GPUType] = {
    # memory bandwidth from the vendors' data sheets (T4 GDDR6, V100 SXM2, A100 40 GB, H100 SXM HBM)
    "T4": GPUType("T4", 16.0, 65.0, 320.0),  # AWS g4dn; the released profiles call it G4
    "V100": GPUType("V100", 16.0, 125.0, 900.0),  # AWS p3.8xlarge; the released profiles call it P3
    "A100": GPUType("A100", 40.0, 312.0, 1555.0),
    "H100": GPUType("H100", 80.0, 989.0, 3350.0),
}


def register_gpu(gpu: GPUType) -> GPUType:
    """Make a GPU type known (e.g. this machine's CPU cores for a validation run)."""
    GPU_TYPES[gpu.name] = gpu
    return gpu


# the released profiles are keyed by AWS instance family
PROFILE_KEY = {"T4": "G4", "V100": "P3"}


@dataclass(frozen=True)
class Node:
    """A machine: `gpus` GPUs of one type joined by `intra_gbps`, and its NIC (`inter_gbps`)."""

    gpu: str
    gpus: int
    intra_gbps: float
    inter_gbps: float
    latency_us: float = 0.0  # per message on its links (the released model has no latency term)

    def __post_init__(self):
        require(self.gpu in GPU_TYPES, f"unknown GPU type {self.gpu!r}; known: {', '.join(GPU_TYPES)}")
        require(self.gpus >= 1, f"a node needs at least one GPU, got {self.gpus}")
        require(self.intra_gbps > 0, f"intra-node bandwidth must be > 0 Gbps, got {self.intra_gbps}")
        require(self.inter_gbps > 0, f"inter-node bandwidth must be > 0 Gbps, got {self.inter_gbps}")
        require(self.latency_us >= 0, f"latency must be >= 0, got {self.latency_us}")


@dataclass(frozen=True)
class Cluster:
    """Nodes in order; a link between two nodes runs at the slower of their NICs."""

    nodes: tuple[Node, ...]
    name: str = ""

    def __post_init__(self):
        require(len(self.nodes) >= 1, "a cluster needs at least one node")
        per = {n.gpus for n in self.nodes}
        require(len(per) == 1, f"all nodes must have the same number of GPUs, got {sorted(per)}")

    @property
    def num_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def gpus_per_node(self) -> int:
        return self.nodes[0].gpus

    @property
    def gpu_types(self) -> list[str]:
        return sorted({n.gpu for n in self.nodes})

    def gpu_share(self) -> dict[str, float]:
        share: dict[str, float] = {}
        for n in self.nodes:
            share[n.gpu] = share.get(n.gpu, 0.0) + n.gpus / self.num_gpus
        return share


def homogeneous_cluster(nodes: int, gpu: str, gpus: int, intra_gbps: float, inter_gbps: float) -> Cluster:
    return Cluster(tuple(Node(gpu, gpus, intra_gbps, inter_gbps) for _ in range(nodes)))


def build_cluster(spec: dict[str, Any]) -> Cluster:
    """`{nodes: [{gpu: V100, gpus: 4, intra_gbps: 170, inter_gbps: 10, count: 3}, ...]}`."""
    nodes = []
    for entry in spec.get("nodes", []):
        entry = dict(entry)
        count = int(entry.pop("count", 1))
        require(count >= 1, f"node count must be >= 1, got {count}")
        try:
            nodes.extend(Node(**entry) for _ in range(count))
        except TypeError as exc:
            raise UserError(f"bad node spec {entry}: {exc}") from None
    return Cluster(tuple(nodes), name=str(spec.get("name", "")))


# ------------------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class Strategy:
    """A 3D-parallel plan. Ranks are laid out tensor-parallel fastest, then data, then pipeline (Megatron /
    DeepSpeed order) over the GPUs of `placement` (a node order; None keeps the cluster's). `partition` holds
    the number of layers of each pipeline stage."""

    tp: int
    dp: int
    pp: int
    mbs: int
    partition: tuple[int, ...] = ()
    placement: tuple[int, ...] | None = None

    def micro_batches(self, global_batch: int) -> int:
        return global_batch // (self.dp * self.mbs)

    def boundaries(self) -> list[int]:
        """The released (DeepSpeed) form: [0, end of stage 0, ..., num_layers]."""
        out = [0]
        for n in self.partition:
            out.append(out[-1] + n)
        return out

    def label(self) -> str:
        return f"tp{self.tp} dp{self.dp} pp{self.pp} mbs{self.mbs}"

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Strategy:
        """`{tp: 1, dp: 4, pp: 4, mbs: 1, partition: [7, 7, 6, 10], placement: [0, 3, 1, 2]}` (the last two
        optional), e.g. from YAML."""
        spec = dict(spec)
        missing = [k for k in ("tp", "dp", "pp", "mbs") if k not in spec]
        require(not missing, f"strategy {spec} lacks {', '.join(missing)}")
        unknown = set(spec) - {"tp", "dp", "pp", "mbs", "partition", "placement"}
        require(not unknown, f"strategy has unknown keys {sorted(unknown)}")
        try:
            place = spec.get("placement")
            return cls(
                int(spec["tp"]),
                int(spec["dp"]),
                int(spec["pp"]),
                int(spec["mbs"]),
                tuple(int(x) for x in spec.get("partition") or ()),
                tuple(int(x) for x in place) if place is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad strategy {spec}: {exc}") from None


def check_strategy(model: Model, cluster: Cluster, s: Strategy, global_batch: int) -> None:
    """Raise UserError unless `s` can run `model` on `cluster` with `global_batch`."""
    n = cluster.num_gpus
    require(min(s.tp, s.dp, s.pp, s.mbs) >= 1, f"degrees and micro-batch size must be >= 1: {s.label()}")
    require(s.tp * s.dp * s.pp == n, f"tp*dp*pp = {s.tp * s.dp * s.pp} does not match the {n} GPUs of the cluster")
    require(
        global_batch % (s.dp * s.mbs) == 0, f"global batch {global_batch} is not divisible by dp*mbs = {s.dp * s.mbs}"
    )
    require(s.pp <= model.num_layers, f"{model.num_layers} layers cannot fill {s.pp} pipeline stages")
    if s.partition:
        require(
            len(s.partition) == s.pp and min(s.partition) >= 1 and sum(s.partition) == model.num_layers,
            f"partition {list(s.partition)} does not split {model.num_layers} layers into {s.pp} stages",
        )


# ------------------------------------------------------------------------------------------------ setups
@dataclass
class Setup:
    """One planning problem: a model, a cluster and a global batch size."""

    name: str
    model: Model
    cluster: Cluster
    global_batch: int
    profile_blend: bool = False  # released model of a mixed cluster: one GPU-share-weighted profile
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def setup_from_dict(spec: dict[str, Any], name: str = "") -> Setup:
    require(isinstance(spec, dict), f"a setup must be a mapping, got {type(spec).__name__}")
    for key in ("model", "cluster", "global_batch"):
        require(key in spec, f"setup {name or spec.get('name', '?')} lacks '{key}'")
    gbs = int(spec["global_batch"])
    require(gbs >= 1, f"global_batch must be >= 1, got {gbs}")
    return Setup(
        name=str(spec.get("name", name)),
        model=build_model(spec["model"]),
        cluster=build_cluster(spec["cluster"]),
        global_batch=gbs,
        profile_blend=bool(spec.get("profile_blend", False)),
        notes=str(spec.get("notes", "")),
        extra={
            k: v
            for k, v in spec.items()
            if k not in ("name", "model", "cluster", "global_batch", "profile_blend", "notes")
        },
    )


def load_setup(name_or_path: str | Path) -> Setup:
    """A setup by name (one of the paper's, shipped in amp/data/setups) or from a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SETUPS_DIR / f"{name_or_path}.yaml"
    require(path.is_file(), f"no setup {str(name_or_path)!r} (looked for {path})")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"setup file {path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return setup_from_dict(spec, name=path.stem)


PAPER_SETUPS = ("homogeneous", "het_cluster", "het_model")
