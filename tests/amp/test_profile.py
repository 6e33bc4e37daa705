"""`python -m amp.profile` on a tiny GPT-2 (random weights, CPU), and the planner reading its output."""

import json

import pytest
import torch

from amp import profile, profiles
from amp.search import search
from amp.specs import setup_from_dict

TINY = {"n_layer": "2", "n_embd": "32", "n_head": "2", "vocab_size": "128", "n_positions": "16"}


@pytest.fixture(scope="module")
def tiny_doc():
    torch.set_num_threads(1)
    blocks = profile.transformers_blocks("gpt2", TINY)
    return profile.profile_document(blocks, "cpu-a", max_mbs=2, repeats=1, device="cpu", memory_gb=4.0)


def test_profile_of_a_tiny_gpt2(tiny_doc):
    layers = tiny_doc["model"]["layers"]
    assert [l["kind"] for l in layers] == ["embedding", "transformer", "transformer", "head"]
    assert layers[0]["shared"] == layers[-1]["shared"] == "embedding"  # GPT-2 ties its embeddings
    assert layers[1]["params"] == 12 * 32 * 32 + 13 * 32  # a block: 12 h^2 weights and its biases and norms
    assert layers[1]["out_elems"] == 16 * 32 and layers[-1]["out_elems"] == 16 * 128
    assert layers[1]["act_bytes"] > 0
    times = tiny_doc["gpus"]["cpu-a"]["times"]["1"]
    assert set(times) == {"1", "2"}
    assert all(t > 0 for t in times["1"]["forward"]) and len(times["2"]["backward"]) == 4
    assert tiny_doc["tp_comm_included"] is False  # one device: the planner models the all-reduces


def test_planner_takes_the_profile_on_a_mixed_cluster(tiny_doc, tmp_path):
    slow = json.loads(json.dumps(tiny_doc))
    slow["gpus"] = {"cpu-b": slow["gpus"]["cpu-a"]}
    for per in slow["gpus"]["cpu-b"]["times"]["1"].values():
        per["forward"] = [3 * t for t in per["forward"]]
        per["backward"] = [3 * t for t in per["backward"]]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile.merge([tiny_doc, slow])))
    setup = setup_from_dict(
        {
            "name": "mixed",
            "global_batch": 8,
            "model": {"type": "profile", "path": str(path)},
            "cluster": {
                "nodes": [
                    {"gpu": "cpu-a", "gpus": 2, "intra_gbps": 40, "inter_gbps": 10},
                    {"gpu": "cpu-b", "gpus": 2, "intra_gbps": 40, "inter_gbps": 10},
                ]
            },
        }
    )
    prof = profiles.for_setup(setup)
    assert prof.gpus() == ["cpu-a", "cpu-b"] and not prof.tp_comm_included
    result = search(setup, prof, "improved")
    assert result.best.total_s > 0 and result.best.feasible


def test_sequential_blocks(tmp_path, monkeypatch):
    (tmp_path / "my_blocks.py").write_text(
        "import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    b = profile.sequential_blocks("my_blocks:make", [8])
    m = profile.measure_blocks(b, max_mbs=1, repeats=1, device="cpu")
    assert [l["out_elems"] for l in m["layers"]] == [16, 16, 4]
    assert [l["params"] for l in m["layers"]] == [8 * 16 + 16, 0, 16 * 4 + 4]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["--model", "/no/such/dir/config.json"], "unknown model"),
        (["--model", "gpt2", "--set", "n_layerz=2"], "has no field 'n_layerz'"),
        (["--blocks", "no_such_module:make", "--input-shape", "4"], "cannot load no_such_module:make"),
        (["--merge", "/no/such/profile.json"], "no profile file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        profile.main([*args, "--out", str(tmp_path / "p.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    "family, sizes",
    [
        (
            "bert",
            {
                "num_hidden_layers": "2",
                "hidden_size": "32",
                "num_attention_heads": "2",
                "intermediate_size": "64",
                "vocab_size": "128",
                "max_position_embeddings": "16",
            },
        ),
        (
            "llama",
            {
                "num_hidden_layers": "2",
                "hidden_size": "32",
                "num_attention_heads": "2",
                "num_key_value_heads": "2",
                "intermediate_size": "64",
                "vocab_size": "128",
                "max_position_embeddings": "16",
            },
        ),
    ],
)
def test_bert_and_llama_configs(family, sizes):
    m = profile.measure_blocks(profile.transformers_blocks(family, sizes), max_mbs=1, repeats=1, device="cpu")
    assert [l["kind"] for l in m["layers"]] == ["embedding", "transformer", "transformer", "head"]
    assert m["layers"][1]["out_elems"] == 16 * 32 and all(t > 0 for t in m["times"]["1"]["forward"][1:3])
