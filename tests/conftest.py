"""Shared fixtures: small slices of real image data sets and tiny configs with a temporary output dir."""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def fashion_mnist_train() -> list[dict]:
    """The real Fashion-MNIST training split (60,000 photos), from the Debian package the setup installs."""
    from d2ssl.data.datasets import get_dataset_dicts

    return get_dataset_dicts("fashion_mnist_train")


@pytest.fixture(scope="session")
def fashion_mnist_small(fashion_mnist_train) -> list[dict]:
    """The first 512 Fashion-MNIST training images (all 10 classes), renumbered 0..511."""
    return [dict(d, image_id=i) for i, d in enumerate(fashion_mnist_train[:512])]


def load_tiny_config(name: str, output_dir: Path, *overrides: str):
    """Loads ``configs/tiny/<name>.py`` with ``train.output_dir`` in a temporary folder."""
    from d2ssl.engine.train_loop import setup_config

    return setup_config(str(CONFIGS / "tiny" / f"{name}.py"), [f"train.output_dir={output_dir}", *overrides])


@pytest.fixture
def tiny_config(tmp_path):
    """``tiny_config("jigsaw", "train.max_iter=5")`` -> a loaded tiny LazyConfig writing under tmp_path."""

    def load(name: str, *overrides: str):
        return load_tiny_config(name, tmp_path / "output", *overrides)

    return load


def pytest_configure(config):
    # The tests' models are tiny: a second intra-op thread gains little, and where other processes
    # share the 2 cores (subprocess tests, a busy machine) thread barriers made steps ~3x slower.
    threads = os.environ.get("D2SSL_TEST_THREADS", "1")
    torch.set_num_threads(int(threads))
    # The same for the tools the tests run as subprocesses (they inherit the environment): two
    # threads per process on a shared 2-core machine made a 120-step tiny run take minutes.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, threads)
