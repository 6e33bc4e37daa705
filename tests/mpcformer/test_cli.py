"""`python -m reproduce.mpcformer`: bad input is one line and exit 2; a paper-scale dry run plans offline."""

import pytest

from tests.conftest import run_cli


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, message",
    [
        # (a sequence longer than the model allows and a mismatched tokenizer raise the same UserError in
        # distill.encode, tested in test_distill; the app turns any UserError into this one line)
        (["approximations=[quad+3quad]"], "unknown approximation 'quad+3quad'"),
        (["mpc.provider=TFP"], "mpc.provider=TFP lets the model owner see the input"),
        (["data.name=glue/sst9"], "unknown GLUE task 'sst9'"),
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
    assert not (tmp_path / "mpcformer").exists()


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
