"""What the demo shows (issue 12, "Done when"): a short pretraining beats random initialisation on the demo's
linear benchmark (the fast linear path on cached features), by a margin measured over 3 seeds."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from detectron2.utils.env import seed_all_rng

from d2ssl.data.splits import holdout_indices
from d2ssl.engine.train_loop import do_train, setup_config
from d2ssl.evaluation.features import extract_from_config
from d2ssl.evaluation.linear_grid import train_linear_grid

REPO = Path(__file__).resolve().parents[2]
# The pretraining recipe, the extraction overrides and the grid are the benchmark's own, so the test runs
# the setting whose spread benchmarks/results/pretraining_vs_random_cpu.json measured.
BENCHMARK = runpy.run_path(str(REPO / "benchmarks" / "pretraining_vs_random.py"))
SEED = 0
# benchmarks/results/pretraining_vs_random_cpu.json (tiny RotNets, 300 steps on 32 px views, training
# seeds 0-2, vs random trunks of init seeds 0-2; res4 of the 32 px view of 10,000 training / 2,000 test
# photos; the benchmark's 16-cell grid): linear top-1 pretrained 80.10-81.15 %, random 74.65-77.70 %; the
# worst pretrained run beats the best random run by 2.40 points. The test asserts half that gap for
# training seed 0 against the random trunk of init seed 0.
MARGIN = 1.2


def pretrain_tiny_rotnet(output_dir: Path) -> str:
    """configs/tiny/rotnet.py for the benchmark's steps on 32 px views, seeded as tools/train_net.py
    seeds it, in this process; returns its model_final.pth."""
    cfg = setup_config(str(REPO / BENCHMARK["PRETRAINING"]["config"]), [
        *BENCHMARK["PRETRAINING"]["overrides"], f"train.max_iter={BENCHMARK['PRETRAINING']['steps']}",
        f"train.seed={SEED}", f"dataloader.train.seed={SEED}", f"train.output_dir={output_dir}",
        "train.checkpointer.period=100000", "train.log_period=100"])
    seed_all_rng(SEED)
    do_train(cfg)
    return str(output_dir / "model_final.pth")


def linear_top1(checkpoint: str | None, output_dir: Path) -> float:
    """Fast-path linear test top-1 (%) of a trunk on the benchmark's cached features: the grid cell
    selected on 10 % of every training class held out (seed 0), as tools/linear_grid.py does."""
    evaluation = BENCHMARK["EVALUATION"]
    cfg = setup_config(str(REPO / BENCHMARK["EXTRACTION_CONFIG"]), BENCHMARK["extraction_overrides"](
        checkpoint, SEED, str(output_dir), evaluation["layer"], evaluation["image_size"],
        evaluation["train_images"], evaluation["test_images"]))
    features = extract_from_config(cfg)
    fit, val = holdout_indices(features["train"].labels, 0.1, seed=0)
    train = features["train"]
    result = train_linear_grid(train.subset(fit), train.subset(val), evaluation["layer"],
                               test=features["test"], **BENCHMARK["GRID"])
    return result.selected["test_top1"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_short_pretraining_beats_random_init_on_the_linear_benchmark(tmp_path):
    pretrained = linear_top1(pretrain_tiny_rotnet(tmp_path / "rotnet"), tmp_path / "pretrained")
    random = linear_top1(None, tmp_path / "random")
    assert pretrained > random + MARGIN, (pretrained, random)
