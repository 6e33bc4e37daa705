"""Evaluation: FID and IS with a configurable feature extractor, reconstruction error, a linear probe.

Two extractors, one interface (`extract(images in [-1, 1]) -> (features, logits)`):
- `LeNetFeatures`: a small classifier trained by the project, deterministically, on the training split
  (mini scale). Its numbers are "FID, LeNet features": comparable with each other, never with Inception FID.
- `InceptionFeatures`: torch-fidelity's InceptionV3 (pool 2048 features + logits) from a local weights file
  (paper scale; `pip install 'mlsys-repro[paper]'`; nothing is downloaded), on the run's device.

FID and IS are torch-fidelity's own functions applied to the features (`fid_features_to_statistics`,
`fid_statistics_to_metric`, `isc_features_to_metric`: IS over 10 shuffled splits, with its std).
Faithfulness of reconstructions: how often the feature network gives a reconstruction the class it gives
its input, and how often a reconstruction's nearest input in feature space is its own input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.errors import UserError

log = logging.getLogger(__name__)


class FeatureExtractor(Protocol):
    name: str

    def extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class LeNet(nn.Module):
    """LeNet-style classifier; its 128-d penultimate activations are the FID features."""

    def __init__(self, channels: int = 1, resolution: int = 32, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (resolution // 4) ** 2, 128), nn.ReLU())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(self.conv(x))
        return h, self.head(h)


@dataclass
class LeNetFeatures:
    net: LeNet
    test_accuracy: float = float("nan")
    name: str = "LeNet features"

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        out = [self.net(images[i : i + batch]) for i in range(0, len(images), batch)]
        return torch.cat([f for f, _ in out]), torch.cat([lg for _, lg in out])


def train_lenet(
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    epochs: int = 4,
    batch: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
) -> LeNetFeatures:
    """Train the feature network on the training split (same seed -> same network on one machine)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = LeNet(x.shape[1], x.shape[-1], int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(net(x[idx])[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    feats = LeNetFeatures(net)
    if x_test is not None:
        feats.test_accuracy = float((feats.extract(x_test)[1].argmax(1) == y_test).float().mean())
    return feats


def check_inception_weights(weights_path: str | None) -> Path:
    path = Path(weights_path or "").expanduser()
    if not weights_path or not path.is_file():
        raise UserError(
            f"Inception weights file not found: {weights_path!r}; pass eval.inception_weights="
            "/path/to/weights-inception-2015-12-05-6726825d.pth"
        )
    return path


class InceptionFeatures:
    """torch-fidelity's InceptionV3 (the FID/IS network of the paper) from a local weights file."""

    name = "Inception features"

    def __init__(
        self,
        weights_path: str | None,
        device: str | torch.device | None = None,
        progress: bool = True,
        features: str = "2048",
    ):
        check_inception_weights(weights_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:
            raise UserError("Inception FID/IS needs torch-fidelity: pip install 'mlsys-repro[paper]'") from exc
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat",
            [str(features), "logits_unbiased"],
            feature_extractor_weights_path=str(Path(weights_path).expanduser()),
        )
        self.net.eval().to(self.device)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
        feats, logits = [], []
        for i in tqdm(
            range(0, len(images), batch),
            desc="inception features",
            leave=False,
            disable=not self.progress or len(images) <= batch,
        ):
            x = images[i : i + batch]
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            # the release writes PNGs: x * 127.5 + 127.5, clamped, truncated to uint8
            x = (x * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
            f, lg = self.net(x.to(self.device))
            feats.append(f.cpu())
            logits.append(lg.cpu())
        return torch.cat(feats).double(), torch.cat(logits).double()


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torch-fidelity's functions)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(f.double().cpu()) for f in (a, b)]
    return float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` shuffled chunks (torch-fidelity's function)."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits.double().cpu(), splits=splits, shuffle=True, rng_seed=seed)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


@dataclass
class Reference:
    """Features of the real images FID is measured against (computed once per run)."""

    features: torch.Tensor

    @classmethod
    def of(cls, extractor: FeatureExtractor, images: torch.Tensor) -> Reference:
        return cls(extractor.extract(images)[0])


def fid_is(extractor: FeatureExtractor, images: torch.Tensor, ref: Reference) -> dict[str, float]:
    """FID against the reference, IS and its std over splits."""
    feats, logits = extractor.extract(images)
    is_mean, is_std = inception_score(logits)
    return {"FID": fid_from_features(feats, ref.features), "IS": is_mean, "IS std": is_std}


def faithfulness(
    extractor: FeatureExtractor, x: torch.Tensor, recon: torch.Tensor, labels: torch.Tensor | None = None
) -> dict[str, float]:
    """How faithful reconstructions are, in the feature network's eyes.

    - "same class": the network gives the reconstruction the class it gives the input;
    - "label acc": the reconstruction is classified as the input's label (when the network classifies
      those labels; beside "real label acc", the same for the inputs themselves);
    - "nearest own": the reconstruction's nearest input in feature space is its own input (chance 1/N).
    """
    fx, lx = extractor.extract(x)
    fr, lr = extractor.extract(recon)
    out = {"same class": float((lr.argmax(1) == lx.argmax(1)).double().mean())}
    if labels is not None and lx.shape[1] > int(labels.max()):
        out["label acc"] = float((lr.argmax(1) == labels).double().mean())
        out["real label acc"] = float((lx.argmax(1) == labels).double().mean())
    nearest = torch.cdist(fr.double(), fx.double()).argmin(dim=1)
    out["nearest own"] = float((nearest == torch.arange(len(x))).double().mean())
    return out


def reconstruction_mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error per pixel, images in [-1, 1]."""
    return float((x - x_hat).pow(2).mean())


def linear_probe(
    z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor, seed: int = 0
) -> float:
    """Test accuracy of a logistic regression on frozen latent means (standardized)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(z_train.numpy(), y_train.numpy())
    return float(clf.score(z_test.numpy(), y_test.numpy()))


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """A torch-fidelity InceptionV3 weights file with random weights (tests run the paper's evaluation path
    end to end without the real 100 MB file). Loads exactly as the real file does."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path)
    empty = path.with_suffix(".empty")
    torch.save({}, empty)
    lenient = lambda self, sd, strict=True: nn.Module.load_state_dict(self, sd, strict=False)  # noqa: E731
    with torch.random.fork_rng(), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lenient):
        torch.manual_seed(seed)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    torch.save(net.state_dict(), path)
    return path
