"""Distillation losses, training that lowers them, exact resume, and tokenizer/length checks."""

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import load_checkpoint
from common.errors import UserError
from mpcformer.convert import to_student
from mpcformer.distill import (
    Encoded,
    Stage1Loss,
    Stage2Loss,
    TrainConfig,
    check_tokenizer,
    encode,
    fine_tune,
    predict,
    task_loss,
    train,
)

from .conftest import tiny_bert


def _data(n=24, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, 7:] = 0
    return Encoded(ids, mask, torch.randint(0, 2, (n,), generator=g))


def test_stage1_is_zero_for_the_teacher_itself_and_positive_for_a_student(tiny):
    data = _data()
    b = data.batch(torch.arange(8))
    teacher = to_student(tiny, "gelu+softmax")
    loss = Stage1Loss(teacher)
    assert loss(to_student(tiny, "gelu+softmax"), b).item() < 1e-10
    assert loss(to_student(tiny, "quad+2quad"), b).item() > 1e-4


def test_stage2_is_soft_cross_entropy(tiny):
    b = _data().batch(torch.arange(8))
    teacher = to_student(tiny, "gelu+softmax")
    p = F.softmax(teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(Stage2Loss(teacher)(to_student(tiny, "gelu+softmax"), b), entropy)


def test_stage2_label_weight_mixes_in_the_labels_cross_entropy(tiny):
    b = _data().batch(torch.arange(8))
    teacher, student = to_student(tiny, "gelu+softmax"), to_student(tiny, "quad+2quad").eval()
    soft = Stage2Loss(teacher)(student, b)
    hard = task_loss(student, b)
    assert abs(hard.item() - soft.item()) > 1e-4  # the mix below can tell them apart
    torch.testing.assert_close(Stage2Loss(teacher, label_weight=0.25)(student, b), 0.75 * soft + 0.25 * hard)
    torch.testing.assert_close(Stage2Loss(teacher, label_weight=1.0)(student, b), hard)
    with pytest.raises(UserError, match="label_weight"):
        Stage2Loss(teacher, label_weight=1.5)


@pytest.mark.parametrize("stage", [1, 2])
def test_each_stage_lowers_its_loss(tiny, stage):
    data = _data(n=8)
    teacher = to_student(tiny, "gelu+softmax")
    with torch.no_grad():  # a confident teacher, so that the student's logits have something to learn
        teacher.classifier.weight.mul_(300)
    student = to_student(tiny, "quad+2quad")
    loss = Stage1Loss(teacher) if stage == 1 else Stage2Loss(teacher)
    b = data.batch(torch.arange(len(data)))
    floor = 0.0  # stage 2's soft cross-entropy cannot go below the teacher's entropy: compare the KL part
    if stage == 2:
        floor = Stage2Loss(teacher)(teacher, b).item()
    with torch.no_grad():
        before = loss(student.eval(), b).item() - floor
    train(
        student,
        loss,
        data,
        TrainConfig(
            steps=5 * stage**2, batch_size=8, lr=1e-3 * (1 + 4 * (stage == 2)), warmup_frac=0.0, progress=False
        ),
    )
    with torch.no_grad():
        after = loss(student.eval(), b).item() - floor
    assert 0 <= after < 0.9 * before


def test_resume_is_exact(tmp_path):
    """A run killed after its step-3 checkpoint and resumed in a fresh model ends bit-identical to one that
    never stopped (batches and dropout come from the RNG state the checkpoint carries)."""
    from mpcformer.study import Budget

    data = _data()
    # as the study builds it from the config (train.checkpoint_every: mid-run checkpoints)
    cfg = Budget(batch_size=4, stage1_steps=3, stage2_steps=3, baseline_lr=1e-3, checkpoint_every=3).config("baseline")
    assert cfg.steps == 6 and cfg.checkpoint_every == 3
    cfg.progress = False
    straight = fine_tune(tiny_bert(seed=3), data, cfg)
    ckpt = tmp_path / "run.pt"
    calls = []

    def killed_in_step_4(model, batch):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return task_loss(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(tiny_bert(seed=3), killed_in_step_4, data, cfg, checkpoint=ckpt)
    assert load_checkpoint(ckpt)["step"] == 3
    torch.manual_seed(123)  # whatever the new process's generator holds, the checkpoint's state wins
    resumed = fine_tune(tiny_bert(seed=3), data, cfg, checkpoint=ckpt)
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=k)


def test_tokenizer_must_match_the_model():
    from transformers import AutoTokenizer

    from common.data import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    with pytest.raises(UserError, match="tokenizer does not match"):
        check_tokenizer(tok, tiny_bert(vocab_size=100))
    with pytest.raises(UserError, match="longer than the model allows"):
        encode(tok, ["a fine film"], [1], 1000, tiny_bert(vocab_size=tok.vocab_size))
    enc = encode(tok, ["a fine film", "dull"], [1, 0], 16, tiny_bert(vocab_size=tok.vocab_size))
    assert enc.input_ids.shape == (2, 16) and enc.labels.tolist() == [1, 0]


def test_predict_batches_by_length_and_returns_logits_in_the_original_order(tiny):
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([9, 3, 12, 5, 12, 2, 7])
    ids = torch.randint(5, 100, (7, 12), generator=g)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    data = Encoded(ids, mask, torch.zeros(7, dtype=torch.long))
    with torch.no_grad():
        alone = torch.cat(
            [
                tiny(input_ids=ids[i : i + 1, :n], attention_mask=mask[i : i + 1, :n]).logits
                for i, n in enumerate(lengths.tolist())
            ]
        )
    torch.testing.assert_close(predict(tiny, data, batch_size=3), alone, atol=1e-5, rtol=1e-5)


def test_cached_teacher_outputs_give_the_same_losses_as_the_teacher(tiny):
    from mpcformer.distill import TeacherOutputs

    data = _data()
    teacher = to_student(tiny, "gelu+softmax")
    cached = TeacherOutputs.compute(teacher, data, batch_size=5, dtype=torch.float32)  # batches of mixed lengths
    student = to_student(tiny_bert(seed=4), "quad+2quad")
    for idx in (torch.arange(8), torch.tensor([2, 5, 9, 23])):
        b = data.batch(idx)
        torch.testing.assert_close(Stage1Loss(cached)(student, b), Stage1Loss(teacher)(student, b))
        torch.testing.assert_close(Stage2Loss(cached)(student, b), Stage2Loss(teacher)(student, b))
    half = TeacherOutputs.compute(teacher, data)  # the default: states in half precision
    assert half.hidden.dtype == torch.float16 and half.hidden.shape == (3, 24, 10, 32)
    b = data.batch(torch.arange(8))
    torch.testing.assert_close(Stage1Loss(half)(student, b), Stage1Loss(teacher)(student, b), rtol=1e-3, atol=1e-4)


def test_batches_are_drawn_by_length_group_and_cover_the_data():
    lengths = torch.randint(2, 30, (200,), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(30)[None, :] < lengths[:, None]).long()
    data = Encoded(mask.clone(), mask, torch.zeros(200, dtype=torch.long))
    torch.manual_seed(0)
    batches = [data.draw(step, 8) for step in range(400)]
    spread = sum(float(lengths[b].max() - lengths[b].min()) for b in batches) / len(batches)
    torch.manual_seed(0)
    random = [torch.randint(200, (8,)) for _ in range(400)]
    assert spread < 0.5 * sum(float(lengths[b].max() - lengths[b].min()) for b in random) / len(random)
    seen = torch.bincount(torch.cat(batches), minlength=200)
    assert (seen > 0).float().mean() > 0.99  # every row is drawn (about 16 times each)


def test_sentence_pair_batches_carry_token_type_ids(tiny):
    data = _data()
    types = torch.zeros_like(data.input_ids)
    types[:, 5:] = 1
    pairs = Encoded(data.input_ids, data.attention_mask, data.labels, types)
    b = pairs.batch(torch.arange(4))
    assert "token_type_ids" in b and b["token_type_ids"].shape == b["input_ids"].shape
    assert not torch.allclose(predict(tiny, pairs), predict(tiny, data))
