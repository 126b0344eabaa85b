"""train.weights_init.PARAMS_FILE and train.init_checkpoint name the starting weights twice: every tool
refuses the pair with one message naming both keys and values, before any work (one rule, in
``d2ssl.checkpoint.load.check_one_trunk_source``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from d2ssl.checkpoint.load import check_one_trunk_source
from d2ssl.engine.launch import launch_from_command_line
from d2ssl.engine.train_loop import build_model, setup_config
from d2ssl.engine.train_loop import main as train_main
from d2ssl.evaluation.linear import do_linear_benchmark, evaluate_only

REPO = Path(__file__).resolve().parents[2]
A, B = "/nowhere/a.pth", "/nowhere/b.pth"
MESSAGE = f"train.weights_init.PARAMS_FILE='{A}' and train.init_checkpoint='{B}' are both set"


def test_the_rule():
    check_one_trunk_source({"weights_init": {"PARAMS_FILE": A}, "init_checkpoint": ""})
    check_one_trunk_source({"weights_init": {"PARAMS_FILE": ""}, "init_checkpoint": B})
    check_one_trunk_source({"init_checkpoint": B})  # detection configs have no weights_init
    check_one_trunk_source(None)
    with pytest.raises(ValueError, match=MESSAGE):
        check_one_trunk_source({"weights_init": {"PARAMS_FILE": A}, "init_checkpoint": B})


def test_train_net_prints_one_error_line_naming_both(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        launch_from_command_line(train_main, [
            "--config-file", str(REPO / "configs/tiny/rotnet.py"), f"train.output_dir={tmp_path / 'out'}",
            "train.max_iter=1", f"train.weights_init.PARAMS_FILE={A}", f"train.init_checkpoint={B}",
        ])
    assert stopped.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {MESSAGE}")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_linear_benchmark_and_its_evaluation_refuse_both(tmp_path):
    config = str(REPO / "configs/eval/tiny/linear.py")
    with pytest.raises(ValueError, match=MESSAGE):
        setup_config(config, [f"train.output_dir={tmp_path}", "model.num_classes=10",
                              f"train.weights_init.PARAMS_FILE={A}", f"train.init_checkpoint={B}"])
    # Set in code after the config was checked: the model builder refuses too.
    cfg = setup_config(config, [f"train.output_dir={tmp_path}", "model.num_classes=10",
                                f"train.weights_init.PARAMS_FILE={A}", "dataloader.test.dataset.limit=10"])
    cfg.train.init_checkpoint = B
    for run in (do_linear_benchmark, evaluate_only, build_model):
        with pytest.raises(ValueError, match=MESSAGE):
            run(cfg)
