"""`compression.dev_select`: its config composed through Hydra and the schema like the study's, the candidates it
trains (ae50 at three lr scales under TP2, every seed, dev evaluated), and a choice made on dev alone."""

import pytest

from compression import dev_select


def test_candidates_come_from_the_composed_config():
    settings = dev_select.plan(dev_select.compose(["accuracy.steps=7"]))
    assert [st.label for st in settings[:3]] == ["ae50_lr1", "ae50_lr3", "ae50_lr10"]
    assert {st.layout.name for st in settings} == {"TP2"} and sorted({st.cfg.seed for st in settings}) == [0, 1, 2]
    assert all(st.cfg.eval_dev and st.cfg.steps == 7 and st.cfg.compressor.d == 50 for st in settings)
    assert [st.cfg.compressor.lr_scale for st in settings[:3]] == [1.0, 3.0, 10.0]


def test_a_bad_override_is_exit_2():
    with pytest.raises(SystemExit) as e:
        dev_select.compose(["accuracy.steps=many"])
    assert e.value.code == 2


def test_glue_is_refused_before_any_training(tmp_path, capsys):
    """GLUE's dev split is its evaluation split: nothing is held out to select on, so it stops at once (exit 2)."""
    with pytest.raises(SystemExit) as e:
        dev_select.main(str(tmp_path / "out.json"), [f"accuracy.glue_root={tmp_path}"])
    assert e.value.code == 2 and not (tmp_path / "out.json").exists()
    assert "dev_select selects on Rotten Tomatoes' dev split" in capsys.readouterr().err  # not a later data error


def test_the_choice_is_made_on_dev_not_test():
    rows = [
        {"label": label, "seed": s, "dev": dev + 0.01 * s, "test": test}
        for s in range(3)
        for label, dev, test in [("a", 0.70, 0.90), ("b", 0.75, 0.60)]
    ]
    out = dev_select.select(rows)
    assert out["selected_on_dev"] == "b"  # a has the better test accuracy; dev picks b
    assert out["summary"]["b"]["dev"] == pytest.approx([0.76, 0.01])


def test_another_auto_encoder_is_selected_by_label():
    from common.errors import UserError

    raw = dev_select.compose(["accuracy.steps=7"])
    settings = dev_select.plan(raw, label="ae20")
    assert [st.label for st in settings[:3]] == ["ae20_lr1", "ae20_lr3", "ae20_lr10"]
    assert all(st.cfg.compressor.d == 20 and st.group == "main" for st in settings) and len(settings) == 9
    with pytest.raises(UserError, match="not an auto-encoder"):
        dev_select.plan(raw, label="int4")


def test_the_command_line_takes_the_result_file_overrides_and_label_in_any_order():
    assert dev_select.cli([]) == ("dev_select.json", [], "ae50")
    assert dev_select.cli(["o.json", "--label", "ae20", "accuracy.steps=2"]) == ("o.json", ["accuracy.steps=2"], "ae20")
    assert dev_select.cli(["accuracy.steps=2", "--label=ae20"]) == ("dev_select.json", ["accuracy.steps=2"], "ae20")
