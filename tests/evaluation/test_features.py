"""Feature extraction: data set order whatever the loader does, labels and indices, reuse."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from tolerances import assert_features_close

from d2ssl.data.mappers.classification import ClassificationMapper
from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation import features as features_module
from d2ssl.evaluation.features import (
    extract_features,
    extract_from_config,
    load_features,
    pool_features,
    trunk_layer_outputs,
)
from d2ssl.modeling.backbone import build_resnet_trunk

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NUM_IMAGES = 48


@pytest.fixture(scope="module")
def images(fashion_mnist_train) -> list[dict]:
    # Not the first images: labels differ from the positions' order.
    return [dict(d, image_id=i) for i, d in enumerate(fashion_mnist_train[1000:1000 + NUM_IMAGES])]


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return build_resnet_trunk(depth=18, base_channels=8, out_features=("res5",)).eval()


MAPPER = ClassificationMapper(train=False, resize_size=32, crop_size=32)


def _assert_close_across_batch_sizes(got: np.ndarray, expected: np.ndarray, trunk, name: str) -> None:
    """The same trunk on other batch sizes: oneDNN may pick other convolution kernels (another sum
    order). Normwise bound (tests/tolerances.py, forward_terms): 2 gamma_n max |features|, n = the
    trunk's fan-ins and norms along the path plus the pooling window (at most 16 x 16 cells here)."""
    assert_features_close(torch.tensor(np.array(got)), torch.tensor(np.array(expected)), trunk,
                          pooled_cells=16 * 16, name=name)


def _one_by_one(trunk, images, layers, pooling="avg"):
    with torch.no_grad():
        rows = []
        for d in images:
            maps = trunk_layer_outputs(trunk, MAPPER(d)["image"][None], layers)
            rows.append({layer: pool_features(maps[layer], layer, pooling)[0].numpy() for layer in layers})
    return {layer: np.stack([r[layer] for r in rows]) for layer in layers}


@pytest.mark.parametrize("num_workers,shuffle", [(0, False), (2, False), (0, True)])
def test_features_in_data_set_order(tmp_path, images, trunk, num_workers, shuffle):
    sampler = None
    if shuffle:
        sampler = torch.utils.data.RandomSampler(images, generator=torch.Generator().manual_seed(1))
    result = extract_features(trunk, images, MAPPER, str(tmp_path), split="train", layers=("res4", "res5"),
                              batch_size=10, num_workers=num_workers, sampler=sampler)
    expected = _one_by_one(trunk, images, ("res4", "res5"))
    for layer in ("res4", "res5"):
        assert result.features[layer].dtype == np.float32
        _assert_close_across_batch_sizes(result.features[layer], expected[layer], trunk, layer)
    np.testing.assert_array_equal(result.labels, [d["label"] for d in images])
    np.testing.assert_array_equal(result.indices, np.arange(NUM_IMAGES))
    assert result.features["res5"].shape == (NUM_IMAGES, 64)  # 8 stem channels x 8 at res5


def test_vissl_pooling_spec_and_early_layers(tmp_path, images, trunk):
    pooling = {"conv1": [[4, 4], 4, 0], "res2": [[2, 2], 2, 0]}
    result = extract_features(trunk, images[:6], MAPPER, str(tmp_path), layers=("conv1", "res2"),
                              pooling=pooling)
    expected = _one_by_one(trunk, images[:6], ("conv1", "res2"), pooling)
    # conv1 is before the max pool: 32 px -> 16 x 16 x 8 channels, pooled 4x4/4 -> 4 x 4 x 8
    assert result.features["conv1"].shape == (6, 8 * 4 * 4)
    assert result.features["res2"].shape == (6, 8 * 4 * 4)  # res2: 8 x 8 x 8, pooled 2x2/2
    for layer in ("conv1", "res2"):
        _assert_close_across_batch_sizes(result.features[layer], expected[layer], trunk, layer)


def test_second_run_reuses_and_other_weights_recompute(tmp_path, images, trunk, monkeypatch):
    out = str(tmp_path)
    first = extract_features(trunk, images[:8], MAPPER, out, split="val", checkpoint="a.pth")
    mtime = os.path.getmtime(tmp_path / "val_res5.npy")
    calls = []
    original = features_module.compute_features
    monkeypatch.setattr(features_module, "compute_features",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    again = extract_features(trunk, images[:8], MAPPER, out, split="val", checkpoint="a.pth")
    assert calls == [] and os.path.getmtime(tmp_path / "val_res5.npy") == mtime
    np.testing.assert_array_equal(again.features["res5"], first.features["res5"])
    # Other weights, written at the same path: recomputed (reuse goes by the weights' digest).
    other = copy.deepcopy(trunk)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    extract_features(other, images[:8], MAPPER, out, split="val", checkpoint="a.pth")
    assert calls == [1]
    assert json.loads((tmp_path / "val_meta.json").read_text())["checkpoint"] == "a.pth"
    loaded = load_features(out, "val")
    recomputed = _one_by_one(other, images[:8], ("res5",))["res5"]
    _assert_close_across_batch_sizes(loaded.features["res5"], recomputed, other, "res5 of the other weights")
    # The first result's memory map still reads the first features: the old file was unlinked, not
    # overwritten in place.
    np.testing.assert_array_equal(first.features["res5"], again.features["res5"])
    assert np.abs(loaded.features["res5"] - first.features["res5"]).max() > 1e-3


def test_unlabelled_data_set_and_missing_extraction(tmp_path, images, trunk):
    unlabelled = [{k: v for k, v in d.items() if k != "label"} for d in images[:4]]
    result = extract_features(trunk, unlabelled, MAPPER, str(tmp_path), split="u")
    assert result.labels is None and len(result) == 4
    with pytest.raises(FileNotFoundError, match="no finished 'test' feature extraction"):
        load_features(str(tmp_path), "test")
    with pytest.raises(KeyError, match=r"layers \['res3'\] were not extracted"):
        load_features(str(tmp_path), "u", layers=("res3",))


def test_extraction_config_loads_a_d2ssl_checkpoint(tmp_path, tiny_config):
    # A pretrained tiny Jigsaw model, its weights moved away from the initialisation, saved as a run's
    # checkpoint (model_final.pth layout: {"model": state_dict}).
    model = instantiate(tiny_config("jigsaw").model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"model": model.state_dict()}, tmp_path / "model_final.pth")
    cfg = setup_config(str(CONFIGS / "eval" / "tiny" / "extract_features.py"), [
        f"train.output_dir={tmp_path}", f"extraction.output_dir={tmp_path / 'features'}",
        f"train.init_checkpoint={tmp_path / 'model_final.pth'}",
        "dataloader.train.dataset.limit=12", "dataloader.test.dataset.limit=6",
    ])
    result = extract_from_config(cfg)
    assert len(result["train"]) == 12 and len(result["test"]) == 6
    test_images = instantiate(cfg.dataloader.test.dataset)
    mapper = ClassificationMapper(train=False, resize_size=64, crop_size=64)
    with torch.no_grad():
        expected = torch.cat([model.pooled_features(mapper(d)["image"][None]) for d in test_images]).numpy()
    _assert_close_across_batch_sizes(result["test"].features["res5"], expected, model.trunk, "res5")


def test_two_processes_write_one_extraction_in_data_set_order(tmp_path):
    # tools/extract_features.py --num-gpus 2 on a CPU config: two gloo processes, each extracting its
    # InferenceSampler shard into the shared memory-mapped files.
    config = CONFIGS / "eval" / "tiny" / "extract_features.py"
    opts = [f"train.output_dir={tmp_path}", "dataloader.train.dataset.limit=21",
            "dataloader.test.dataset.limit=5", "extraction.batch_size=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    tool = str(CONFIGS.parent / "tools" / "extract_features.py")
    subprocess.run([sys.executable, tool, "--config-file", str(config), "--num-gpus", "2", *opts,
                    f"extraction.output_dir={tmp_path / 'two'}"], check=True, env=env, capture_output=True)
    cfg = setup_config(str(config), [*opts, f"extraction.output_dir={tmp_path / 'one'}"])
    one = extract_from_config(cfg)  # the same seed-0 random trunk, in this one process
    two = {split: load_features(str(tmp_path / "two"), split) for split in ("train", "test")}
    for split in ("train", "test"):
        _assert_close_across_batch_sizes(two[split].features["res5"], one[split].features["res5"],
                                         instantiate(cfg.model), f"{split} res5")
        np.testing.assert_array_equal(two[split].labels, one[split].labels)
