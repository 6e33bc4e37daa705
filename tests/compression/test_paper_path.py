"""The paper path end to end on tiny local inputs: GLUE-format TSV files written here and read through `datasets`,
a tiny random-weight BERT from a `transformers` config with a tokenizer built offline, the paper-scale config
(overridden down to that model) fine-tuned under TP2xPP2 on four processes with a compressor, to the tables."""

import random

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from common.errors import UserError
from common.text_data import glue, glue_task_folder
from compression import study
from reproduce import app
from tests.conftest import ROOT
from tests.fixtures.tiny_hub import write_tiny_bert

WORDS = "the a film movie good bad great awful plot actor story is was not very fun dull long short".split()


def _write_glue(root, n_train=32, n_dev=16):
    rng = random.Random(0)
    for folder, header, make in [
        (
            "RTE",
            "index\tsentence1\tsentence2\tlabel",
            lambda i: (
                f"{i}\t{' '.join(rng.choices(WORDS, k=6))}\t{' '.join(rng.choices(WORDS, k=4))}\t"
                f"{rng.choice(['entailment', 'not_entailment'])}"
            ),
        ),
        ("SST-2", "sentence\tlabel", lambda i: f'{" ".join(rng.choices(WORDS, k=7))} "quoted\t{rng.randint(0, 1)}'),
    ]:
        (root / folder).mkdir(parents=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            (root / folder / f"{split}.tsv").write_text("\n".join([header] + [make(i) for i in range(n)]) + "\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    _write_glue(root / "glue")
    write_tiny_bert(root / "tiny-bert", WORDS, hidden=16, classifier=False, max_positions=32)
    return root


def test_glue_reads_the_task_folders_of_a_glue_download(inputs):
    rte = glue("rte", glue_task_folder(inputs / "glue", "rte"))["train"]
    assert len(rte) == 32 and list(rte.columns) == ["text", "text_pair", "label"]
    assert set(rte["label"]) == {0, 1} and rte["text_pair"].str.len().gt(0).all()
    sst = glue("sst2", glue_task_folder(inputs / "glue", "sst2"))["dev"]
    assert len(sst) == 16 and "text_pair" not in sst and '"quoted' in sst["text"][0]  # GLUE quotes kept as text
    with pytest.raises(UserError, match="lacks train.tsv, dev_matched.tsv"):
        glue("mnli", glue_task_folder(inputs / "glue", "mnli"))
    with pytest.raises(UserError, match="unknown GLUE task"):
        glue_task_folder(inputs / "glue", "stsb")


def _paper_cfg(inputs, *extra):
    overrides = [
        "scale=paper",
        f"accuracy.model_path={inputs / 'tiny-bert'}",
        f"accuracy.glue_root={inputs / 'glue'}",
        "accuracy.task=rte",
        "accuracy.layouts=[{tp:2,pp:2}]",
        "accuracy.early_layouts=[{tp:2,pp:2}]",
        "accuracy.compressors=[none,ae50,topk]",
        "accuracy.early=[ae50]",
        "accuracy.start_layer=1",
        "accuracy.layers=2",
        "accuracy.seq_len=16",
        "accuracy.batch_size=8",
        "accuracy.micro_batches=2",
        "accuracy.steps=3",
        "accuracy.lr=1e-3",
        "accuracy.seeds=[0]",
        "compressors.ae50.d=4",
        "ablation.when=never",
        "ablation.compressors=[]",
        "bench.world=2",
        "bench.hidden=16",
        "bench.heads=4",
        "bench.ffn=32",
        "bench.layers=2",
        "bench.seq_len=8",
        "bench.batch_size=4",
        "bench.start_layer=0",
        "bench.compressors=[none,int8]",
        *extra,
    ]
    app._register_base()
    with initialize_config_dir(config_dir=str(ROOT / "reproduce" / "conf" / "compression"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


@pytest.mark.timeout(150)
def test_paper_config_fine_tunes_under_tp2_x_pp2_to_the_tables(inputs):
    s = study.StudyConfig.parse(_paper_cfg(inputs))
    assert s.train.model_config().hidden == 16 and s.train.model_config().classes == 2
    settings = s.settings("main") + s.settings("early")
    assert {st.layout.name for st in settings} == {"TP2xPP2"} and len(settings) == 4
    runs = study.run_accuracy(settings, timeout_s=140)
    assert len(runs) == 4 and runs.acc.between(0, 1).all() and (runs.MB_per_step > 0).all()
    # the auto-encoder (d=4 of hidden 16) sends fewer bytes than no compression on the same layout
    mb = runs.set_index(["compressor", "layers"]).MB_per_step
    assert mb[("ae50", "1-1")] < mb[("none", "-")]
    acc = study.accuracy_table(runs, s.specs, (8, 16, 16))
    assert list(acc.layout.unique()) == ["TP2xPP2"] and acc.fewer_bytes[acc.compressor == "ae50"].iloc[0] == 4.0
    assert set(acc.group) == {"main", "early"}


def test_paper_scale_defaults_hold_the_studys_layouts():
    app._register_base()
    with initialize_config_dir(config_dir=str(ROOT / "reproduce" / "conf" / "compression"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=["scale=paper"]), resolve=True)
    s = study.StudyConfig.parse(cfg)  # the model directory is missing here: its shape is checked when it exists
    assert [lay.name for lay in s.layouts] == ["TP4", "TP2xPP2", "TP4xPP4"]
    assert [lay.world for lay in s.layouts] == [4, 4, 16]
    assert s.train.layers == 24 and s.start_layer == 12 and s.train.glue_root and s.train.missing_paths()
