"""Initialisation of trunks and heads against the references' rules, written here from their code (not
read back from d2ssl): VISSL's trunk is torchvision's ``ResNet`` (vissl/models/trunks/resnext.py l. 99-102,
commit 09270ed), whose init is torchvision/models/resnet.py l. 208-223 (0.29): convolutions
``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, every norm weight 1 and bias 0, and with
``zero_init_residual`` the last norm of each block (``bn3`` / ``bn2``) zeroed whatever its type. VISSL's
``MLP`` head keeps PyTorch's default Linear init (vissl/models/heads/mlp.py l. 72-74); MoCo / JigClu's
linear fc is normal(0, 0.01) with a zero bias (moco main_lincls.py l. 168-169).

The random draws are checked by their sampling law, with tolerances from the sample size: the sample
standard deviation of n normal draws has relative standard error ``1 / sqrt(2 (n - 1))``, the sample
mean ``sigma / sqrt(n)``; six standard errors (a false failure once in ~5e8 draws, and the seeds are
fixed) leave every plausible wrong rule (fan_in instead of fan_out, uniform, 0.01) far outside.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from d2ssl.evaluation.models import PooledLinearHead
from d2ssl.modeling.backbone import build_resnet_trunk
from d2ssl.modeling.heads import mlp_head

SIGMAS = 6.0


def assert_normal_law(weight: torch.Tensor, std: float, name: str) -> None:
    """Mean 0 and standard deviation ``std`` within SIGMAS standard errors of n draws."""
    w = weight.detach().double().flatten()
    n = w.numel()
    mean_tol = SIGMAS * std / math.sqrt(n)
    std_tol = SIGMAS * std / math.sqrt(2 * (n - 1))
    assert abs(w.mean().item()) <= mean_tol, (
        f"{name}: mean {w.mean().item():.3g}, allowed +-{mean_tol:.3g} ({n} draws)")
    assert abs(w.std().item() - std) <= std_tol, (
        f"{name}: std {w.std().item():.4g}, the reference's {std:.4g}, allowed +-{std_tol:.3g} ({n} draws)")


def test_trunk_convolutions_and_norms_are_initialised_as_torchvisions_resnet():
    torch.manual_seed(0)
    trunk = build_resnet_trunk(depth=50, base_channels=16)
    convs = [(name, m) for name, m in trunk.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * 16 + 4  # stem, three per bottleneck block, four projection shortcuts
    for name, conv in convs:
        out_channels, _, kh, kw = conv.weight.shape
        # kaiming_normal_(fan_out, relu): std = gain / sqrt(fan_out), gain sqrt(2), fan_out = out * kh * kw.
        assert_normal_law(conv.weight, math.sqrt(2.0 / (out_channels * kh * kw)), name)
        assert conv.bias is None
    norms = [(name, m) for name, m in trunk.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == len(convs)
    for name, norm in norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), name
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), name


def _last_norms(depth: int) -> set[str]:
    """The norm after the last conv of every block, named by hand: conv3 of bottlenecks, conv2 of basic
    blocks, stage by stage (ResNet-18: 2 2 2 2 blocks, ResNet-50: 3 4 6 3)."""
    blocks, last = {18: ((2, 2, 2, 2), "conv2"), 50: ((3, 4, 6, 3), "conv3")}[depth]
    return {f"res{stage}.{b}.{last}.norm" for stage, count in zip((2, 3, 4, 5), blocks) for b in range(count)}


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "naiveSyncBN", "GN"])
@pytest.mark.parametrize("depth", [18, 50])
def test_zero_init_residual_zeroes_the_last_norm_of_every_block_whatever_the_norm(depth, norm):
    # torchvision zeroes bn3 / bn2 for any norm_layer (resnet.py l. 218-223); VISSL converts BN to
    # SyncBN (CONVERT_BN_TO_SYNC_BN) and d2ssl's R50 configs train with norm="SyncBN".
    trunk = build_resnet_trunk(depth=depth, base_channels=32, norm=norm, zero_init_residual=True)
    weights = {name: m.weight for name, m in trunk.named_modules()
               if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))}
    zeroed = {name for name, w in weights.items() if not w.any()}
    assert zeroed == _last_norms(depth), sorted(zeroed ^ _last_norms(depth))
    assert all(torch.equal(w, torch.ones_like(w)) for name, w in weights.items() if name not in zeroed)
    plain = build_resnet_trunk(depth=depth, base_channels=32, norm=norm)
    assert all(m.weight.all() for m in plain.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm,
                                                                          nn.GroupNorm)))


def test_projection_heads_keep_pytorchs_default_linear_init_as_vissls_mlp():
    # PyTorch's Linear default (kaiming_uniform_ with a = sqrt(5)): weight and bias uniform on
    # [-1/sqrt(fan_in), 1/sqrt(fan_in)], std bound / sqrt(3); not MoCo's normal(0, 0.01).
    torch.manual_seed(0)
    head = mlp_head([512, 256, 128], use_bn=True)
    for layer in (m for m in head if isinstance(m, nn.Linear)):
        bound = 1 / math.sqrt(layer.in_features)
        w = layer.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound  # 3e4+ draws reach the edge
        assert_normal_law(w, bound / math.sqrt(3), f"Linear({layer.in_features}, {layer.out_features})")
        assert layer.bias.abs().max() <= bound and layer.bias.any()


def test_linear_probe_fc_is_mocos_normal_0_01_with_zero_bias_and_vissls_default_without():
    torch.manual_seed(0)
    fc = PooledLinearHead(in_channels=512, in_dim=512, num_classes=200).linear
    assert_normal_law(fc.weight, 0.01, "fc.weight")
    assert torch.equal(fc.bias, torch.zeros(200))
    # Normal, not uniform with that std: 4.55 % of normal draws lie beyond 2 std (binomial standard
    # error sqrt(p (1 - p) / n)); uniform draws with std 0.01 never exceed 0.0173 (= sqrt(3) std).
    n, beyond = fc.weight.numel(), (fc.weight.abs() > 0.02).double().mean().item()
    p = math.erfc(2 / math.sqrt(2))
    assert abs(beyond - p) <= SIGMAS * math.sqrt(p * (1 - p) / n), (
        f"{beyond:.4f} of fc.weight beyond 2 std, a normal law's {p:.4f}")
    default = PooledLinearHead(in_channels=512, in_dim=512, num_classes=200, init_std=None).linear
    assert default.weight.abs().max() <= 1 / math.sqrt(512) and default.bias.any()
