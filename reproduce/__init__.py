"""`python -m reproduce.<work>` regenerates a paper's tables and figures; `python -m reproduce` runs them all.

Works: dcvae (DC-VAE), amp (AMP), compression (activation compression), mpcformer (MPCFormer).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

WORKS = {
    "dcvae": "DC-VAE: contrastive VAE/GAN trained data-parallel (vaegan_contrastive)",
    "amp": "AMP: heterogeneity-aware model-parallel planner (amp)",
    "compression": "Activation compression for tensor/pipeline parallelism (compression)",
    "mpcformer": "MPCFormer: private Transformer inference with CrypTen (mpcformer)",
}


def implemented(work: str) -> bool:
    """A work is implemented once its reproduce module and config exist."""
    here = Path(__file__).parent
    return (here / "conf" / work / "config.yaml").exists() and importlib.util.find_spec(f"reproduce.{work}") is not None
