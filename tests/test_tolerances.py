"""tests/tolerances.py: the float32 sum-order bound accepts what another summation order gives, rejects
a real error, and names the worst element; assert_equal names it too."""

from __future__ import annotations

import pytest
import torch
from tolerances import U32, assert_close_sum_order, assert_equal, gamma, gradient_term_sums
from torch import nn


def _cancelling_terms(n: int, seed: int) -> torch.Tensor:
    """n float32 terms of size ~1 whose sum is ~1e-6 of sum |t|: a gradient value of both signs."""
    g = torch.Generator().manual_seed(seed)
    terms = torch.rand(n // 2, generator=g) + 0.5
    return torch.cat([terms, -terms * (1 - 1e-6)])[torch.randperm(n, generator=g)].float()


def test_another_summation_order_passes_the_derived_bound_where_a_fixed_rtol_fails():
    # The failure of issue 23: a gradient value, a sum of ~16k products, summed in another order on
    # another CPU, off by more than rtol 1e-3 / atol 1e-5 of its (small) value.
    rejected_by_rtol = 0
    for seed in range(20):
        terms = _cancelling_terms(16384, seed)
        sequential = torch.zeros((), dtype=torch.float32)
        for chunk in terms.split(1024):  # another blocking, as another kernel or process split
            sequential = sequential + chunk.flip(0).sum()
        pairwise = terms.sum()
        assert_close_sum_order(sequential, pairwise, terms=len(terms), scale=terms.abs().sum(), name="sum")
        try:
            torch.testing.assert_close(sequential, pairwise, rtol=1e-3, atol=1e-5)
        except AssertionError:
            rejected_by_rtol += 1
        exact = terms.double().sum()  # and each is within gamma_n sum |t| of the exact sum
        assert abs(pairwise.double() - exact) <= gamma(len(terms)) * terms.abs().sum().double()
    assert rejected_by_rtol > 0  # the machine-fitted tolerance fails some of these legitimate orders


def test_failure_names_the_worst_element_both_values_and_the_tolerance():
    expected = torch.zeros(3, 4)
    actual = expected.clone()
    actual[1, 2], actual[2, 3] = 1e-3, 2e-4
    with pytest.raises(AssertionError) as error:
        assert_close_sum_order(actual, expected, terms=100, scale=1.0, name="trunk.stem.conv1.weight")
    message = str(error.value)
    tol = 2 * gamma(100)
    assert "trunk.stem.conv1.weight: 2 of 12 values" in message and "worst at index (1, 2)" in message
    assert "actual 0.001" in message and "expected 0" in message and f"tolerance {tol:.3g}" in message
    # Within the bound: 100 terms at scale 1 allow 2 gamma_100 ~ 1.2e-5.
    actual = expected + 0.9 * tol
    assert_close_sum_order(actual, expected, terms=100, scale=1.0, name="x")
    with pytest.raises(AssertionError, match="values differ"):  # a NaN is never close
        assert_close_sum_order(torch.tensor([float("nan")]), torch.tensor([0.0]), terms=1, scale=1.0,
                               name="x")


def test_assert_equal_is_bitwise_and_names_the_worst_element():
    a = torch.arange(6.0).view(2, 3)
    assert_equal(a, a.clone(), "a")
    b = a.clone()
    b[1, 0] += 2 * U32 * 3  # one ulp of 3
    with pytest.raises(AssertionError, match=r"1 of 6 values differ; worst at index \(1, 0\)"):
        assert_equal(b, a, "a")
    with pytest.raises(AssertionError, match="float64"):
        assert_equal(a.double(), a, "a")


def test_gradient_term_sums_of_a_linear_layer_are_the_gradient_of_absolute_values():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    upstream = torch.randn(5, 2)
    scales, path_terms = gradient_term_sums(layer, lambda: (layer(x) * upstream).sum())
    scale, n = scales["weight"]
    assert n == 5 and path_terms == 2 * (3 + 5)
    torch.testing.assert_close(scale, (upstream.abs().T @ x.abs()).double())
    torch.testing.assert_close(layer.weight.grad, upstream.T @ x)  # the gradient itself is left as computed
    assert (scale >= layer.weight.grad.abs()).all()
