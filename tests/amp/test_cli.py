"""`python -m reproduce.amp`: bad input is one line and exit 2; smoke writes the paper's tables."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# AMP's published numbers as the reference notes give them (shared/reference/PAPERS.md): Table 1's baseline and
# AMP s/iter and its speedups (homogeneous: "matches", no factor), Fig. 4's Spearman, and the search time of
# the released code in the authors' README (seconds, one CPU).
PUBLISHED = {
    "homogeneous": {
        "baseline_s": 1.32,
        "amp_s": 1.20,
        "speedup_claim": "matches",
        "speedup": None,
        "spearman_figure": 0.931,
        "released_search_s": 500,
    },
    "het_cluster": {
        "baseline_s": 1.97,
        "amp_s": 1.28,
        "speedup_claim": "1.54x",
        "speedup": 1.54,
        "spearman_figure": 0.687,
        "released_search_s": 500,
    },
    "het_model": {
        "baseline_s": 1.89,
        "amp_s": 1.07,
        "speedup_claim": "1.77x",
        "speedup": 1.77,
        "spearman_figure": 0.842,
        "released_search_s": 200,
    },
}


def run_cli(*args, timeout=120):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "reproduce.amp", "tracking.mode=disabled", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def write_setup(tmp_path, gpu="V100", inter=10, layers=24, name="s.yaml"):
    p = tmp_path / name
    p.write_text(f"""
name: custom
global_batch: 32
model: {{type: gpt2, layers: {layers}}}
cluster:
  nodes:
    - {{gpu: {gpu}, gpus: 4, intra_gbps: 170, inter_gbps: {inter}, count: 2}}
""")
    return p


def assert_one_line_exit_2(proc, needle):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(120)
def test_strategy_that_does_not_divide_the_gpus(tmp_path):
    # 8 GPUs: tp*dp*pp = 3*1*1 does not match them
    assert_one_line_exit_2(
        run_cli(
            "scale=smoke",
            f"plan.setup={write_setup(tmp_path)}",
            "plan.strategy={tp:3,dp:1,pp:1,mbs:1}",
            f"results_dir={tmp_path}/r",
        ),
        "does not match the 8 GPUs",
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["top_k=-1"], "top_k must be >= 1, got -1"),
        (["top=0"], "top must be >= 1, got 0"),
        (["plan.setup={bad}"], "is not valid YAML (line 3"),
    ],
)
def test_bad_values_are_one_line_and_lose_nothing(args, needle, smoke, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {type: gpt2\n  - : [\n")
    before = {f.relative_to(smoke): f.read_bytes() for f in smoke.rglob("*") if f.is_file()}
    args = [a.format(bad=bad) for a in args]
    assert_one_line_exit_2(run_cli("scale=smoke", *args, f"results_dir={smoke.parents[1]}"), needle)
    assert {f.relative_to(smoke): f.read_bytes() for f in smoke.rglob("*") if f.is_file()} == before


def test_bad_inputs_are_user_errors(tmp_path):
    from amp import profiles
    from amp.specs import Strategy, check_strategy, load_setup
    from common.errors import UserError

    with pytest.raises(UserError, match="unknown GPU type 'Z100'"):
        load_setup(write_setup(tmp_path, gpu="Z100"))
    with pytest.raises(UserError, match="bandwidth must be > 0"):
        load_setup(write_setup(tmp_path, inter=0))
    setup = load_setup(write_setup(tmp_path))
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"V100": {"1": [0.01] * 7}}))
    with pytest.raises(UserError, match="has 7 layers but model gpt2 has 30"):
        profiles.load_json(prof, setup.model)
    small = load_setup(write_setup(tmp_path, layers=1))  # 7 planner layers on 8 GPUs
    with pytest.raises(UserError, match="7 layers cannot fill 8 pipeline stages"):
        check_strategy(small.model, small.cluster, Strategy(1, 1, 8, 1), 32)
    with pytest.raises(UserError, match="released gpt2 profile has 30 layers"):
        profiles.released(load_setup(write_setup(tmp_path, layers=12)).model)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """One smoke run shared by the tests below: its results folder (RESULTS/amp/smoke)."""
    root = tmp_path_factory.mktemp("results")
    proc = run_cli("scale=smoke", f"results_dir={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "amp" / "smoke"


def test_smoke_writes_released_ranking_and_correlations(smoke):
    out = smoke
    ranking = pd.read_csv(out / "ranking.csv")
    assert ranking.order_equal.all() and len(ranking) == 3
    corr = pd.read_csv(out / "correlation.csv")
    rel = corr[corr["mode"] == "released"].set_index("setup")
    assert rel.loc["homogeneous", "spearman"] == pytest.approx(0.935, abs=5e-3)
    assert (out / "figures" / "scatter_het_model.png").is_file()
    assert "(paper)" in (out / "tables.md").read_text()
    speed = pd.read_csv(out / "speedup.csv")
    rel = speed[speed["mode"] == "released"].set_index("setup")
    assert rel.loc["het_cluster", "best_of_top_k_s"] == pytest.approx(1.28)  # the released top 10's fastest run
    assert set(speed["mode"]) == {"released", "improved", "improved_fit"}
    claims = json.loads((out / "claims.json").read_text())["claims"]
    verdicts = {c["key"]: c["verdict"] for c in claims}
    assert verdicts["amp_released_ranking"] == "holds" and verdicts["amp_faster_than_heuristic"] == "holds"
    assert (out / "claims.md").is_file()


def test_the_paper_file_holds_only_published_numbers():
    from reproduce.amp import PAPER

    assert yaml.safe_load(PAPER.read_text())["setups"] == PUBLISHED


def _published(setup: str) -> list:
    return [v for v in PUBLISHED.get(setup, {}).values() if v is not None]


def test_every_paper_column_holds_a_published_number(smoke):
    """Each value of a column labelled as the paper's is one of that setup's published numbers (or blank),
    and every decimal number in a claim's "paper's evidence" is a published one."""
    checked = 0
    for csv in sorted(smoke.glob("*.csv")):
        df = pd.read_csv(csv)
        for col in [c for c in df.columns if "(paper" in c]:
            for setup, v in zip(df["setup"], df[col]):
                if isinstance(v, float) and math.isnan(v):
                    continue
                assert any(v == p or v == str(p) for p in _published(setup)), f"{csv.name} {col} {setup}: {v}"
                checked += 1
    assert checked >= 30
    every = {float(v) for s in PUBLISHED for v in _published(s) if not isinstance(v, str)}
    for c in json.loads((smoke / "claims.json").read_text())["claims"]:
        for num in re.findall(r"\d+\.\d+", c["paper_evidence"]):
            assert float(num) in every, f"{c['key']}: {num} in {c['paper_evidence']!r}"


@pytest.mark.timeout(120)
def test_plan_with_a_profile_file_leaves_the_reproduction_in_place(tmp_path, smoke):
    import shutil

    prof = tmp_path / "p.json"
    shutil.copy(ROOT / "tests" / "amp" / "data" / "tiny_gpt2_profile.json", prof)
    setup = tmp_path / "mixed.yaml"
    setup.write_text(f"""
name: tiny-mixed
global_batch: 8
model: {{type: profile, path: {prof}}}
cluster:
  nodes:
    - {{gpu: cpu-a, gpus: 2, intra_gbps: 40, inter_gbps: 10}}
    - {{gpu: cpu-b, gpus: 2, intra_gbps: 40, inter_gbps: 10}}
""")
    before = {f.relative_to(smoke): f.read_bytes() for f in smoke.rglob("*") if f.is_file()}
    results = smoke.parents[1]  # the smoke run's results_dir
    proc = run_cli("scale=smoke", f"plan.setup={setup}", f"plan.profile={prof}", f"results_dir={results}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the reproduction's tables and claims are still there, byte for byte
    after = {f.relative_to(smoke): f.read_bytes() for f in smoke.rglob("*") if f.is_file()}
    assert sorted(after) == sorted(before) and after == before
    plan = pd.read_csv(results / "amp" / "smoke-plan" / "plan.csv")
    assert len(plan) >= 1 and plan.fits.all()
