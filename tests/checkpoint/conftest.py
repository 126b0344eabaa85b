"""Fixtures of the checkpoint tests."""

from __future__ import annotations

import pytest
import torch
from resnet_helpers import torchvision_resnet
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    # ResNets on 64 px images gain little from a second thread, and on a loaded 2-core machine the
    # threads' barriers make them several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tv_resnet18() -> nn.Module:
    return torchvision_resnet("resnet18", seed=1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
