"""Swapping a config's data for the user's own (``dataloader.<split>.dataset=folder:PATH`` / ``list:FILE``)
keeps what the config's data set node means: ClusterFit keeps its pseudo-labels (checked against the data
they were clustered from), the tiny configs' kNN monitor, output names and class counts follow the new
data, and tools/split_dataset.py's lists load back through ``list:`` with their labels."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import instantiate
from omegaconf import DictConfig
from PIL import Image

from d2ssl.config import dataset_name_of, dataset_shorthand, instantiate_dataset
from d2ssl.data.datasets import DatasetError, attach_labels, labels_record_path, load_image_folder
from d2ssl.data.splits import knn_monitor_part, write_dataset_split
from d2ssl.engine.hooks import instantiate_hook
from d2ssl.engine.train_loop import setup_config
from d2ssl.evaluation.clustering import cluster_and_label, cluster_from_config
from d2ssl.evaluation.features import dataset_digest
from d2ssl.evaluation.linear import do_linear_benchmark

REPO = Path(__file__).resolve().parents[1]
CLASSES = 4


def _class_tree(root: Path, fashion: list[dict], per_class: int, offset: int = 0) -> Path:
    """``root/c<k>/0000.png ...``: real Fashion-MNIST photos of class k, the SAME file names in every
    class folder (as most real sets: 0001.jpg in each), ``offset`` skipping the first photos of a class."""
    for label in range(CLASSES):
        (root / f"c{label}").mkdir(parents=True)
        photos = [d for d in fashion if d["label"] == label][offset:offset + per_class]
        for i, d in enumerate(photos):
            Image.fromarray(np.asarray(d["image"])).save(root / f"c{label}" / f"{i:04d}.png")
    return root


@pytest.fixture
def photos(tmp_path, fashion_mnist_small) -> Path:
    """``photos/train`` (6 per class) and ``photos/test`` (3 other photos per class), 4 classes."""
    _class_tree(tmp_path / "photos" / "train", fashion_mnist_small, per_class=6)
    _class_tree(tmp_path / "photos" / "test", fashion_mnist_small, per_class=3, offset=6)
    return tmp_path / "photos"


def _relative(dicts: list[dict], root: Path) -> list[str]:
    return [os.path.relpath(d["file_name"], root) for d in dicts]


# ------------------------------------------------------------------ tools/split_dataset.py -> list:

def test_split_of_a_class_folder_with_repeated_names_loads_through_list_with_its_labels(photos, tmp_path):
    root = photos / "train"
    paths = write_dataset_split(f"folder:{root}", str(tmp_path / "split"), ratios=(0.5, 0.25, 0.25))
    folder = {os.path.relpath(d["file_name"], root): d["label"] for d in load_image_folder(str(root))}
    loaded = [instantiate_dataset(dataset_shorthand(f"list:{p}"), "dataloader.train.dataset") for p in paths]
    seen = []
    # Cuts at round(6 x 0.5) = 3 and round(6 x 0.75) = round(4.5) = 4 (half to even): 3, 1, 2 per class.
    for part, per_class in zip(loaded, (3, 1, 2)):
        assert all(os.path.isfile(d["file_name"]) for d in part)
        # Each image keeps its folder's label (not a bare 0001.png that names 4 images).
        assert {os.path.relpath(d["file_name"], root): d["label"] for d in part}.items() <= folder.items()
        assert Counter(d["label"] for d in part) == {k: per_class for k in range(CLASSES)}
        seen += _relative(part, root)
    assert sorted(seen) == sorted(folder)  # disjoint parts covering the folder
    assert (tmp_path / "split" / "classes.txt").read_text().split() == ["c0", "c1", "c2", "c3"]


def test_a_split_written_by_the_tool_trains_and_evaluates_through_list(photos, tmp_path):
    train, _, test = write_dataset_split(f"folder:{photos / 'train'}", str(tmp_path / "split"),
                                         ratios=(0.5, 0.25, 0.25))
    cfg = setup_config(str(REPO / "configs/eval/tiny/linear.py"), [
        f"train.output_dir={tmp_path / 'run'}", "train.max_iter=2", "train.eval_period=0",
        "train.checkpointer.period=2", "dataloader.train.total_batch_size=4",
        f"dataloader.train.dataset=list:{train}", f"dataloader.test.dataset=list:{test}",
    ])
    results = do_linear_benchmark(cfg)
    assert cfg.model.num_classes == CLASSES  # a 4-class folder gives a 4-way classifier
    assert 0.0 <= results["top1"] <= 100.0


def test_list_lines_mixing_labelled_and_bare_paths_are_refused_naming_the_file(tmp_path):
    (tmp_path / "l.txt").write_text("a/0001.png 0\nb/0001.png\n")
    with pytest.raises(ValueError, match=r"l\.txt.*'b/0001\.png'.*'PATH LABEL' on every line"):
        instantiate_dataset(dataset_shorthand(f"list:{tmp_path / 'l.txt'}"), "dataloader.train.dataset")


# ------------------------------------------------------------------ ClusterFit keeps its pseudo-labels

def _pseudo_labels(dataset: list[dict], output_dir: Path, num_clusters: int, digest: str | None) -> str:
    pixels = np.stack([np.asarray(Image.open(d["file_name"])).reshape(-1) for d in dataset])
    out = cluster_and_label(pixels.astype(np.float32), str(output_dir), num_clusters=num_clusters, n_iter=5,
                            dataset_name="photos", train_dataset_digest=digest)
    return out.labels_file


def test_clusterfit_folder_swap_keeps_the_pseudo_labels_never_the_folders_classes(
    photos, tiny_config, tmp_path
):
    root = photos / "train"
    folder = load_image_folder(str(root))
    labels_file = _pseudo_labels(folder, tmp_path / "clusters", 6, dataset_digest(folder))
    cfg = tiny_config("clusterfit", f"dataloader.train.dataset=folder:{root}",
                      f"dataloader.train.dataset.labels_file={labels_file}")
    dataset = instantiate_dataset(cfg.dataloader.train.dataset, "dataloader.train.dataset")
    assert [d["file_name"] for d in dataset] == [d["file_name"] for d in folder]
    assert [d["label"] for d in dataset] == np.load(labels_file).tolist()  # the clusters, not c0..c3
    assert instantiate(cfg.model).head[-1].out_features == 6  # the record's cluster count


def test_clusterfit_labels_of_another_data_set_of_the_same_length_are_refused_naming_both(
    photos, fashion_mnist_small, tiny_config, tmp_path
):
    root = photos / "train"
    other = [dict(d, image_id=i) for i, d in enumerate(fashion_mnist_small[:24])]  # 24 images as the folder
    folder = load_image_folder(str(root))
    labels_file = _pseudo_labels(folder, tmp_path / "clusters", 6, dataset_digest(other))
    cfg = tiny_config("clusterfit", f"dataloader.train.dataset=folder:{root}",
                      f"dataloader.train.dataset.labels_file={labels_file}")
    with pytest.raises(ValueError, match=rf"{labels_file}.*labels the data set 'photos train' \(digest "
                                           rf"{dataset_digest(other)[:12]}.*another one \(digest "
                                           rf"{dataset_digest(folder)[:12]}"):
        instantiate_dataset(cfg.dataloader.train.dataset, "dataloader.train.dataset")


def test_cluster_step_on_a_folder_names_its_outputs_after_it_and_step_2_trains_on_them(photos, tmp_path):
    cfg = setup_config(str(REPO / "configs/tiny/clusterfit_cluster.py"), [
        f"train.output_dir={tmp_path / 'cluster'}", f"extraction.output_dir={tmp_path / 'features'}",
        "train.weights_init.PARAMS_FILE=", "clustering.NUM_CLUSTERS=5", "clustering.N_ITER=5",
        f"dataloader.train.dataset=folder:{photos / 'train'}",
        f"dataloader.test.dataset=folder:{photos / 'test'}",
    ])
    outputs = cluster_from_config(cfg)
    assert os.path.basename(outputs.labels_file) == "photos_train_N5_faiss_lbls.npy"
    assert os.path.basename(outputs.test_labels_file) == "photos_test_N5_faiss_lbls.npy"
    step2 = setup_config(str(REPO / "configs/tiny/clusterfit.py"), [
        f"train.output_dir={tmp_path / 'fit'}", f"dataloader.train.dataset=folder:{photos / 'train'}",
        f"dataloader.train.dataset.labels_file={outputs.labels_file}",
    ])
    dataset = instantiate_dataset(step2.dataloader.train.dataset, "dataloader.train.dataset")
    assert [d["label"] for d in dataset] == np.load(outputs.labels_file).tolist()
    assert instantiate(step2.model).head[-1].out_features == 5
    # The test split's labels were assigned to other images: refused as step 2's training labels.
    wrong = setup_config(str(REPO / "configs/tiny/clusterfit.py"), [
        f"train.output_dir={tmp_path / 'fit2'}", f"dataloader.train.dataset=folder:{photos / 'test'}",
        f"dataloader.train.dataset.labels_file={outputs.labels_file}",
    ])
    with pytest.raises(ValueError, match="holds"):  # 12 test images, 24 labels: the length check first
        instantiate_dataset(wrong.dataloader.train.dataset, "dataloader.train.dataset")


# ------------------------------------------------------------------ tiny configs follow the swap

@pytest.mark.parametrize("method", ["rotnet", "jigsaw", "npid", "pirl", "jigclu"])
def test_tiny_config_folder_swap_scores_the_knn_monitor_on_the_users_images(method, photos, tiny_config):
    root = photos / "train"
    cfg = tiny_config(method, f"dataloader.train.dataset=folder:{root}", "train.knn_monitor.k=5")
    memory = instantiate(cfg.train.knn_monitor.memory)
    queries = instantiate(cfg.train.knn_monitor.queries)
    folder = {os.path.relpath(d["file_name"], root): d["label"] for d in load_image_folder(str(root))}
    for part in (memory, queries):
        assert {os.path.relpath(d["file_name"], root): d["label"] for d in part}.items() <= folder.items()
    assert not set(_relative(memory, root)) & set(_relative(queries, root))  # held out from each other
    assert len(memory) + len(queries) == 24
    monitor = instantiate_hook(cfg.train.knn_monitor, "train.knn_monitor")
    assert sorted(set(monitor.labels["memory"])) == list(range(CLASSES))


def test_unlabelled_training_images_switch_the_monitor_off_with_one_log_line(tmp_path, tiny_config,
                                                                             fashion_mnist_small, caplog):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, d in enumerate(fashion_mnist_small[:8]):
        Image.fromarray(np.asarray(d["image"])).save(flat / f"{i}.png")
    cfg = tiny_config("rotnet", f"dataloader.train.dataset=folder:{flat}")
    with caplog.at_level(logging.INFO):
        assert instantiate_hook(cfg.train.knn_monitor, "train.knn_monitor") is None
    assert [r.message for r in caplog.records if "kNN monitor off" in r.message] != []


def test_monitor_parts_are_disjoint_and_fixed_by_the_seed(fashion_mnist_small):
    memory = knn_monitor_part(fashion_mnist_small, "memory", limit=100)
    queries = knn_monitor_part(fashion_mnist_small, "queries", limit=50)
    assert (len(memory), len(queries)) == (100, 50)
    assert not {d["image_id"] for d in memory} & {d["image_id"] for d in queries}
    ids = [d["image_id"] for d in memory]
    assert ids == [d["image_id"] for d in knn_monitor_part(fashion_mnist_small, "memory", limit=100)]
    assert ids != [d["image_id"] for d in knn_monitor_part(fashion_mnist_small, "memory", limit=100, seed=1)]
    assert sorted(Counter(d["label"] for d in memory)) == list(range(10))  # every class votes


def test_output_names_come_from_the_data_set():
    assert dataset_name_of(dataset_shorthand("folder:/data/photos/train"), "train") == "photos"
    assert dataset_name_of(dataset_shorthand("folder:/data/flowers/"), "train") == "flowers"
    assert dataset_name_of(dataset_shorthand("list:/s/flowers/val.txt")) == "flowers_val"
    assert dataset_name_of(dataset_shorthand("catalog:fashion_mnist_train"), "train") == "fashion_mnist"
    wrapped = dataset_shorthand("folder:/data/photos/train", DictConfig(
        {"_target_": "d2ssl.data.datasets.attach_labels", "labels_file": "x.npy",
         "dataset": {"_target_": "d2ssl.data.datasets.get_dataset_dicts", "names": "fashion_mnist_train"}}))
    assert wrapped.labels_file == "x.npy" and wrapped.dataset.root == "/data/photos/train"
    assert dataset_name_of(wrapped) == "photos_train"


def test_attach_labels_without_a_record_still_checks_the_length(tmp_path, fashion_mnist_small):
    np.save(tmp_path / "l.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(DatasetError, match=r"holds \(3,\) labels"):
        attach_labels(fashion_mnist_small[:4], str(tmp_path / "l.npy"))


def test_a_new_clustering_without_a_digest_leaves_no_stale_record_beside_its_labels(photos, tmp_path):
    folder = load_image_folder(str(photos / "train"))
    labels_file = _pseudo_labels(folder, tmp_path / "clusters", 6, dataset_digest(folder))
    assert os.path.isfile(labels_record_path(labels_file))
    assert _pseudo_labels(folder, tmp_path / "clusters", 6, None) == labels_file
    assert not os.path.exists(labels_record_path(labels_file))  # the old record no longer vouches
