"""Why a student does or does not learn: how much its final [CLS] representation varies across inputs, and
how much of the label loss's gradient reaches its embeddings (Quad can flatten a pretrained BERT so that
every input looks alike and almost no gradient reaches the lower layers)."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .convert import Approximation, to_student
from .distill import Encoded, model_inputs, task_loss

EXAMPLES = 64


@torch.no_grad()
def cls_spread(model: nn.Module, data: Encoded, n: int = EXAMPLES) -> float:
    """Mean over features of the standard deviation over the first `n` examples of the final [CLS]
    representation (all the classifier sees). Near 0: every input looks alike."""
    b = data.batch(torch.arange(min(n, len(data))))
    out = model.eval()(**model_inputs(b), output_hidden_states=True)
    return float(out.hidden_states[-1][:, 0].std(0).mean())


def embedding_gradient(model: nn.Module, data: Encoded, n: int = 16) -> float:
    """Norm of the label loss's gradient reaching the (trainable) embedding parameters on the first `n`
    examples, without dropout: how much signal training on labels sends to the lowest layer."""
    model.eval()
    params = [p for p in model.base_model.embeddings.parameters() if p.requires_grad]
    grads = torch.autograd.grad(task_loss(model, data.batch(torch.arange(min(n, len(data))))), params)
    return float(torch.sqrt(sum(g.square().sum() for g in grads)))


def diagnostics(teacher: nn.Module, students: dict[Approximation, nn.Module], data: dict[str, Encoded]) -> pd.DataFrame:
    """Per approximation: [CLS] spread of the distilled student (test split) and the gradient reaching the
    embeddings of the student as it starts (the teacher's weights, training split), each beside the teacher's."""
    t_spread, t_grad = cls_spread(teacher, data["test"]), embedding_gradient(teacher, data["train"])
    return pd.DataFrame(
        [
            {
                "approximation": a.label,
                "cls_spread_distilled": cls_spread(s, data["test"]),
                "cls_spread_teacher": t_spread,
                "embedding_grad_at_start": embedding_gradient(to_student(teacher, a), data["train"]),
                "embedding_grad_teacher": t_grad,
            }
            for a, s in students.items()
        ]
    )
