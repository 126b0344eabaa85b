"""Fixtures of the checkpoint tests."""

from __future__ import annotations

import pytest
import torch
from resnet_helpers import torchvision_resnet
from torch import nn


@pytest.fixture(scope="module")
def tv_resnet18() -> nn.Module:
    return torchvision_resnet("resnet18", seed=1)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
