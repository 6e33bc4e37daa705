"""Two runs of one config give the same tables: the thread count, which changes the numbers bit for bit, is fixed
by the config and is part of the checkpoint key; at a fixed thread count the whole study is deterministic."""

import hashlib
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mpcformer.convert import EXACT, to_student
from mpcformer.distill import Encoded, TeacherOutputs, TrainConfig, distill, fine_tune
from reproduce.mpcformer import _training_keys
from tests.mpcformer.conftest import tiny_bert

CONF = Path(__file__).parents[2] / "reproduce" / "conf" / "mpcformer"


def test_the_config_fixes_the_thread_count_and_the_checkpoint_key_holds_it():
    assert isinstance(OmegaConf.load(CONF / "config.yaml").torch_threads, int)  # null would follow the machine
    cfg = OmegaConf.create({"model": {}, "data": {}, "train": {"teacher_steps": 1}, "seed": 0, "torch_threads": 1})
    other = OmegaConf.merge(cfg, {"torch_threads": 2})
    assert _training_keys(cfg) != _training_keys(other)  # never resume a run made at another thread count


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for _, v in sorted(model.state_dict().items()):
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_teacher_cache_and_distillation_repeat_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (24, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 8:] = 0
    data = Encoded(ids * mask, mask, torch.randint(0, 2, (24,), generator=g))
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-3, progress=False)

    def once() -> str:
        torch.manual_seed(0)
        teacher = fine_tune(tiny_bert(seed=1), data, cfg)
        cached = TeacherOutputs.compute(to_student(teacher, EXACT), data)
        torch.manual_seed(0)
        return _digest(distill(to_student(teacher, "quad+2quad"), cached, data, cfg, cfg))

    assert once() == once()
