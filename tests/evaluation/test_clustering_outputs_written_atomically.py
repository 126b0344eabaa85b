"""ClusterFit step 1's outputs: written atomically, the summary last, naming the features clustered."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from d2ssl.evaluation.clustering import cluster_and_label
from d2ssl.evaluation.features import array_digest


def _features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(200, 8)).astype(np.float32)


def test_summary_names_the_features_clustered(tmp_path):
    train, test = _features(0), _features(1)[:50]
    out = cluster_and_label(train, str(tmp_path), num_clusters=4, n_iter=5, seed=0, test_features=test)
    inputs = json.loads((tmp_path / "clustering_summary.json").read_text())["inputs"]
    assert inputs == {"train_features_sha256": array_digest(train),
                      "test_features_sha256": array_digest(test),
                      "train_dataset_digest": None, "test_dataset_digest": None}  # no images named here
    assert array_digest(train) != array_digest(_features(2))
    assert out.summary["inputs"] == inputs


def test_disk_full_while_writing_keeps_the_previous_files_whole_and_the_run_unfinished(tmp_path, monkeypatch):
    out = cluster_and_label(_features(0), str(tmp_path), num_clusters=4, n_iter=5, seed=0)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    save = np.save

    def save_then_disk_full(f, array, *args, **kwargs):
        if array.ndim == 2:  # the centroids: half written, then the disk is full
            save(f, array[: len(array) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(f, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        cluster_and_label(_features(1), str(tmp_path), num_clusters=4, n_iter=5, seed=0)
    assert (tmp_path / os.path.basename(out.centroids_file)).read_bytes() == before[os.path.basename(
        out.centroids_file)]
    assert np.load(out.centroids_file).shape == (4, 8)
    assert not list(tmp_path.glob("*.tmp"))
    # The labels were already replaced: without a summary the folder says it holds no finished run.
    assert not (tmp_path / "clustering_summary.json").exists()
