"""`python -m reproduce.mpcformer`: bad input is one line and exit 2; a paper-scale dry run plans offline."""

import re

import pytest

from tests.conftest import compose_work, run_cli


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, message",
    [
        # (a sequence longer than the model allows and a mismatched tokenizer raise the same UserError in
        # distill.encode, tested in test_distill; the app turns any UserError into this one line)
        (["approximations=[quad+3quad]"], "unknown approximation 'quad+3quad'"),
        (["mpc.provider=TFP"], "mpc.provider=TFP lets the model owner see the input"),
        (["data.name=glue/sst9"], "unknown GLUE task 'sst9'"),
        # checked before any training (the study used to train first)
        (["mpc_eval.models=[quad+softmax]"], "mpc_eval.models: quad+softmax not trained in this run"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli(
        [
            "-m",
            "reproduce.mpcformer",
            "scale=smoke",
            "tracking.mode=disabled",
            f"results_dir={tmp_path}",
            f"checkpoint_dir={tmp_path}/ckpt",
            *args,
        ]
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "mpcformer").exists() and not (tmp_path / "ckpt").exists()  # nothing trained


def _cfg(overrides: list[str]):
    return compose_work("mpcformer", ["scale=smoke", "results_dir=/tmp", *overrides])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mpc.provider=foo"], "unknown mpc.provider 'foo'; choose from TTP, TFP"),
        (["mpc.provider=TFP"], "mpc.provider=TFP lets the model owner see the input"),
        (["bench.providers=[foo]"], "unknown provider 'foo' in bench.providers; choose from TTP, TFP"),
        (["bench.providers=[]"], "bench.providers is empty"),
        (["mpc_eval.batch_size=0"], "mpc_eval.batch_size must be >= 1, got 0"),
        (["mpc_eval.examples=0"], "mpc_eval.examples must be >= 1 or null"),
        (["mpc_eval.length_bucket=0"], "mpc_eval.length_bucket must be >= 1 or null"),
        (["mpc_eval.risk_examples=-1"], "mpc_eval.risk_examples must be >= 0"),
        (["mpc_eval.models=[quad+softmax]"], "mpc_eval.models: quad+softmax not trained in this run"),
        (["bench.models=[gelu+2relu]"], "bench.models: gelu+2relu not trained in this run"),
        (["train.checkpoint_every=-1"], "train.checkpoint_every must be >= 0"),
        (["train.teacher_cache_max_gb=0"], "train.teacher_cache_max_gb must be > 0"),
        (["model.name=/nonexistent/bert"], "model.name=/nonexistent/bert: no such folder"),
    ],
)
def test_the_config_is_checked_before_anything_runs(overrides, message):
    from common.errors import UserError
    from reproduce.mpcformer import parse

    parse(_cfg([]))  # the smoke config itself is fine
    with pytest.raises(UserError, match=re.escape(message)):
        parse(_cfg(overrides))


@pytest.mark.timeout(120)
def test_paper_dry_run_plans_offline_and_writes_nothing(tmp_path):
    proc = run_cli(["-m", "reproduce.mpcformer", "scale=paper", "dry_run=true", f"results_dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "name: paper" in out and "bert-base-uncased" in out and "imdb" in out
    assert "plan: teacher bert-base-uncased (layers: all) fine-tuned on imdb (length 512)" in out
    assert "at [32, 64, 128, 256, 512], providers" in out  # bench.long adds the 256 and 512 whole-model cases
    assert "quad+softmax, gelu+2relu, quad+2relu, gelu+2quad, quad+2quad" in out
    assert "teacher outputs for distillation computed on each batch; checkpoints every 500 steps and at the end" in out
    assert not any(tmp_path.iterdir())
