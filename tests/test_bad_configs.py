"""Bad configs and arguments fail before training starts, naming the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detectron2.config import instantiate

from d2ssl.config import ConfigError, check_num_train_samples, instantiate_dataset, validate_config
from d2ssl.data.datasets import DatasetError, load_image_list
from d2ssl.data.mappers import JigsawMapper
from d2ssl.data.permutations import generate_permutations
from d2ssl.engine.train_loop import do_train, fill_num_train_samples, setup_config
from d2ssl.losses.nce import NCELossWithMemory

REPO = Path(__file__).resolve().parents[1]
TINY_JIGSAW = str(REPO / "configs/tiny/jigsaw.py")
DIGITS = "dataloader.train.dataset.names=digits_train"  # 1,348 images
CONFIGS = sorted(
    p.relative_to(REPO / "configs").as_posix()
    for p in (REPO / "configs").glob("**/*.py")
    if "common" not in p.parts and "suites" not in p.parts  # suites list steps, not a training
)
SUITES = sorted(p.stem for p in (REPO / "configs/suites").glob("*.py"))


@pytest.mark.parametrize("suite", SUITES)
def test_every_shipped_suite_loads_and_names_configs_that_pass_the_checks(suite):
    from d2ssl.evaluation.benchmark_suite import load_suite

    steps = load_suite(suite).steps
    assert steps, f"suite {suite} has no step"
    for step in steps:
        if step.config:
            path = Path(step.config) if Path(step.config).is_absolute() else REPO / step.config
            setup_config(str(path), list(step.overrides))


@pytest.mark.parametrize("config", CONFIGS)
def test_every_shipped_config_passes_the_checks(config):
    # The checks must not refuse a config the project ships (no false alarms).
    setup_config(str(REPO / "configs" / config))


def test_unknown_override_key_lists_the_keys_that_exist():
    with pytest.raises(KeyError, match=r"'dataloader\.train\.mapper\.gridd'.*keys there: \[.*'grid'"):
        setup_config(TINY_JIGSAW, ["dataloader.train.mapper.gridd=3"])


def test_unknown_key_written_in_a_config_file_is_caught():
    cfg = setup_config(TINY_JIGSAW)
    cfg.dataloader.train.mapper.gridd = 3  # as a typo in the .py file would add it
    with pytest.raises(ConfigError, match=r"unknown key dataloader\.train\.mapper\.gridd: JigsawMapper takes "
                                          r"\[.*'grid'.*'tile_size'"):
        validate_config(cfg, TINY_JIGSAW)
    cfg = setup_config(TINY_JIGSAW)
    cfg.train.max_iters = 5
    with pytest.raises(ConfigError, match=r"unknown key train\.max_iters; allowed: \[.*'max_iter'"):
        validate_config(cfg, TINY_JIGSAW)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_iter=ten", r"train\.max_iter must be a positive integer, got 'ten'"),
        ("train.checkpointer.max_to_keep=0", r"max_to_keep must be a positive integer or null, got 0"),
        ("train.device='gpu'", r"train\.device must be 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'"),
        ("optimizer.lr=-0.1", r"optimizer\.lr must be a positive number, got -0\.1"),
        ("dataloader.train.mapper.tile_size=14.5",
         r"mapper\.tile_size=14\.5 \(float\) has the wrong type: JigsawMapper takes tile_size: int"),
        ("dataloader.train.num_workers=true",
         r"num_workers=True \(bool\).*build_ssl_train_loader takes num_workers: int"),
        ("model.head.per_tile.dims=64",
         r"model\.head\.per_tile\.dims=64 \(int\).*mlp_head takes dims: Sequence\[int\]"),
        ("dataloader.train.mapper.permutations.method=2",
         r"permutations\.method=2 \(int\).*load_or_create_permutations takes method: str"),
    ],
)
def test_wrong_type_or_value_names_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        setup_config(TINY_JIGSAW, [override])


def test_memory_smaller_than_the_data_set_fails_before_the_model_is_built(tiny_config):
    cfg = tiny_config("npid", DIGITS, "model.loss.num_train_samples=100")
    with pytest.raises(ConfigError, match=r"model\.loss\.num_train_samples=100 is smaller than the data set "
                                          r"\(1348 images\).*allowed: >= 1348, or -1"):
        do_train(cfg)
    assert not Path(cfg.train.output_dir).exists()  # nothing was started
    # -1 is filled in with the size and passes.
    cfg = tiny_config("npid")
    fill_num_train_samples(cfg.model, 1348)
    check_num_train_samples(cfg.model, 1348)


def test_more_negatives_than_the_bank_fails_before_training(tiny_config):
    # The tiny NPID config asks for 4096 negatives; digits has 1,348 images.
    cfg = tiny_config("npid", DIGITS)
    message = r"num_negatives=4096 must be between 1 and .*\(1347: memory size 1348"
    with pytest.raises(ValueError, match=message):
        do_train(cfg)
    assert not Path(cfg.train.output_dir).exists()


def test_nce_loss_checks_its_memory_and_negatives():
    with pytest.raises(ValueError, match=r"num_negatives=100 must be between 1 and .*\(99"):
        NCELossWithMemory(num_train_samples=100, negative_sampling_params={"num_negatives": 100})
    with pytest.raises(ValueError, match=r"memory_size=50 is smaller than .*num_train_samples=100"):
        NCELossWithMemory(num_train_samples=100, memory_params={"memory_size": 50},
                          negative_sampling_params={"num_negatives": 10})
    loss = NCELossWithMemory(num_train_samples=100, negative_sampling_params={"num_negatives": 99})
    assert loss.memory_size == 100


def test_tile_grid_that_does_not_fit_the_crop_fails_when_the_mapper_is_built():
    # A 2x2 grid on the 64 px crop has cells of 32 px.
    cfg = setup_config(TINY_JIGSAW, ["dataloader.train.mapper.tile_size=40"])
    message = r"tile_size=40 does not fit a 2x2 grid on crop_size=64 \(cells of 32 px\): need tile_size <="
    with pytest.raises(ValueError, match=message):
        instantiate(cfg.dataloader.train.mapper)
    perms = generate_permutations(4, 24)
    with pytest.raises(ValueError, match=r"resize_size=32 < crop_size=64.*need resize_size >= crop_size"):
        JigsawMapper(perms, grid=2, resize_size=32, crop_size=64, tile_size=28)


def test_label_file_of_the_wrong_length_names_both_files(tmp_path):
    list_file, labels_file = tmp_path / "list.txt", tmp_path / "labels.npy"
    list_file.write_text("a.jpg\nb.jpg\nc.jpg\n")
    np.save(labels_file, np.arange(4))
    with pytest.raises(DatasetError, match=r"labels\.npy.*holds \(4,\) labels, but .*list\.txt.* lists 3"):
        load_image_list(str(list_file), labels_file=str(labels_file))
    np.save(labels_file, np.zeros((3, 2)))
    with pytest.raises(DatasetError, match=r"holds \(3, 2\) labels"):
        load_image_list(str(list_file), labels_file=str(labels_file))
    np.save(labels_file, np.array([2, 0, 1]))
    assert [d["label"] for d in load_image_list(str(list_file), labels_file=str(labels_file))] == [2, 0, 1]


@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.startswith("detection")])
def test_every_config_takes_a_folder_from_the_command_line(config, tmp_path):
    cfg = setup_config(str(REPO / "configs" / config), [f"dataloader.train.dataset=folder:{tmp_path}"])
    # The loader node is replaced whole: no argument of the one it replaces (names, limit, ...) lingers.
    # A node that derives its data from another (ClusterFit's pseudo-labels, a 1 % subset) stays, with
    # the folder as the data it derives from (tests/test_data_swaps.py).
    node = cfg.dataloader.train.dataset
    target = node._target_ if isinstance(node._target_, str) else node._target_.__name__
    if target.rsplit(".", 1)[-1] in ("attach_labels", "class_balanced_subset"):
        node = node.dataset
    assert dict(node) == {"_target_": "d2ssl.data.datasets.load_image_folder", "root": str(tmp_path)}


def test_list_and_catalog_shorthands(tmp_path):
    # A later override refines the new node.
    cfg = setup_config(TINY_JIGSAW, [f"dataloader.train.dataset=list:{tmp_path}/train.txt",
                                     f"dataloader.train.dataset.root={tmp_path}"])
    assert dict(cfg.dataloader.train.dataset) == {"_target_": "d2ssl.data.datasets.load_image_list",
                                                  "list_file": f"{tmp_path}/train.txt", "root": str(tmp_path)}
    cfg = setup_config(TINY_JIGSAW, ["dataloader.train.dataset=catalog:digits_train,digits_test"])
    assert dict(cfg.dataloader.train.dataset) == {"_target_": "d2ssl.data.datasets.get_dataset_dicts",
                                                  "names": ["digits_train", "digits_test"]}
    assert len(instantiate(cfg.dataloader.train.dataset)) == 1797
    # Anything else is an ordinary value.
    cfg = setup_config(TINY_JIGSAW, ["train.output_dir=folder:x"])
    assert cfg.train.output_dir == "folder:x"


def test_catalog_shorthand_keeps_the_detection_loader_and_its_options():
    path = str(REPO / "configs/detection/faster_rcnn_R50_FPN_coco.py")
    before = setup_config(path).dataloader.test.dataset
    cfg = setup_config(path, ["dataloader.test.dataset=catalog:voc_2007_test"])
    after = cfg.dataloader.test.dataset
    assert after.names == ["voc_2007_test"]
    others = [k for k in before if k != "names"]
    assert others and all(after[k] == before[k] for k in others)


def test_missing_data_set_root_names_the_config_key_and_the_path(tmp_path):
    # Set in the config file (ImageNet's folder, absent here) ...
    cfg = setup_config(str(REPO / "configs/rotnet_R50.py"))
    message = r"dataloader\.train\.dataset\.root='datasets/imagenet/train': image folder 'datasets/imagenet/"
    with pytest.raises(ConfigError, match=message):
        instantiate_dataset(cfg.dataloader.train.dataset, "dataloader.train.dataset")
    # ... or on the command line, and found before the model is built.
    cfg = setup_config(TINY_JIGSAW, [f"dataloader.train.dataset=list:{tmp_path / 'none.txt'}",
                                     f"train.output_dir={tmp_path / 'out'}"])
    with pytest.raises(ConfigError, match=r"dataloader\.train\.dataset\.list_file='.*none\.txt': image list"):
        do_train(cfg)
    assert not (tmp_path / "out").exists()
