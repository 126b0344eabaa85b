import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from d2ssl.engine.train_loop import fill_num_train_samples, scale_to_world_size, setup_config

REPO = Path(__file__).resolve().parents[2]


def test_linear_scaling_rule_follows_the_number_of_processes():
    cfg = setup_config(str(REPO / "configs/jigsaw_R50.py"))
    assert cfg.train.reference_world_size == 8 and cfg.dataloader.train.total_batch_size == 256
    scale_to_world_size(cfg, 16)
    assert cfg.dataloader.train.total_batch_size == 512
    assert cfg.optimizer.lr == pytest.approx(0.2)
    cfg = setup_config(str(REPO / "configs/jigsaw_R50.py"), ["train.epochs=null", "train.max_iter=1000"])
    scale_to_world_size(cfg, 2)
    assert (cfg.dataloader.train.total_batch_size, cfg.train.max_iter) == (64, 4000)
    assert cfg.optimizer.lr == pytest.approx(0.025)


def test_scaling_that_does_not_divide_the_batch_is_an_error():
    cfg = setup_config(str(REPO / "configs/jigsaw_R50.py"), ["dataloader.train.total_batch_size=250"])
    with pytest.raises(ValueError, match="total_batch_size=250"):
        scale_to_world_size(cfg, 3)


def test_num_train_samples_is_filled_wherever_it_is_left_at_minus_one():
    node = OmegaConf.create({"loss": {"num_train_samples": -1, "inner": [{"num_train_samples": -1}]},
                             "other": {"num_train_samples": 7}})
    assert fill_num_train_samples(node, 123) == 2
    assert node.loss.num_train_samples == 123 and node.loss.inner[0].num_train_samples == 123
    assert node.other.num_train_samples == 7


def test_unknown_override_key_names_the_key_and_what_exists():
    with pytest.raises(KeyError, match=r"'train.max_iters'.*max_iter"):
        setup_config(str(REPO / "configs/tiny/jigsaw.py"), ["train.max_iters=5"])


def test_tiny_jigsaw_trains_through_the_command_line_tool(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-W", "ignore", str(REPO / "tools/train_net.py"), "--config-file",
           str(REPO / "configs/tiny/jigsaw.py"), "--num-gpus", "0", f"train.output_dir={out}",
           "train.max_iter=120", "train.log_period=20", "train.checkpointer.period=60"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # detectron2-style progress (iteration, losses, ETA) ...
    log = result.stdout + result.stderr
    assert "eta:" in log and "iter: 119" in log and "total_loss" in log
    # ... TensorBoard events, a metrics log and checkpoints in the output dir.
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "model_final.pth").exists() and (out / "last_checkpoint").read_text() == "model_final.pth"
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    accuracies = [r["jigsaw_accuracy"] for r in records if "jigsaw_accuracy" in r]
    # Pretext accuracy rises well above chance (1/24) within 120 iterations of 32 real images.
    assert accuracies[-1] > 5 * (1 / 24)
    assert accuracies[-1] > accuracies[0]


def test_override_may_set_an_argument_the_config_leaves_at_its_default():
    cfg = setup_config(str(REPO / "configs/tiny/pirl.py"), ["dataloader.train.dataset.limit=64"])
    assert cfg.dataloader.train.dataset.limit == 64
    with pytest.raises(KeyError, match=r"'dataloader.train.dataset.limt'.*'limit', 'names'"):
        setup_config(str(REPO / "configs/tiny/pirl.py"), ["dataloader.train.dataset.limt=64"])
