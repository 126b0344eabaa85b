"""Float tolerances derived from the arithmetic, not from the machine a test was first run on.

Two computations of the same float32 value that add the same terms in different orders (two
processes vs one, another batch split, another BLAS/oneDNN kernel for AVX2 vs AVX-512) differ by
rounding only. Higham (Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1) bounds the
error of any evaluation order of ``s = sum_i t_i`` (n terms, each a product computed once) by

    |fl(s) - s| <= gamma_n * sum_i |t_i|,    gamma_n = n u / (1 - n u),    u = 2**-24 (float32),

so two orders differ by at most ``2 gamma_n sum_i |t_i|``. The bound scales with ``sum |t_i|``, not with
``|s|``: a gradient value that is a small sum of large terms of both signs (cancellation) may differ in
its leading digits, which is why a relative tolerance on the value itself (``rtol``) is machine luck.

When the factors of the sum come out of earlier float32 sums themselves (a layer's output gradient
from the layers after it), their rounding enters the same way, to first order: counting in ``n`` the
lengths of every reduction on the path (Higham's bound for a product of matrices, section 3.5, counts
the inner dimensions the same way). Each use says which sums it counts.

``assert_close_sum_order`` applies that bound element by element and, when it fails, names the worst
element: its index, both values, the difference and the tolerance, with how many elements failed.
``assert_equal`` is for bitwise claims (the same operations in the same order).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

U32 = 2.0**-24  # float32 unit roundoff (round to nearest)


def gamma(n: int, u: float = U32) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of an n-term sum of products."""
    if n * u >= 1:
        raise ValueError(f"gamma_n is unbounded for n={n} terms at unit roundoff {u}")
    return n * u / (1 - n * u)


def sum_order_tolerance(terms: int, scale: torch.Tensor | float, u: float = U32) -> torch.Tensor:
    """``2 gamma_terms * scale``: how far two evaluation orders of the same sum may be apart, where
    ``scale`` is ``sum |t_i|`` (per element, or one bound for all)."""
    return 2 * gamma(terms, u) * torch.as_tensor(scale, dtype=torch.float64)


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape)) if len(shape) else ()


def assert_close_sum_order(
    actual: torch.Tensor, expected: torch.Tensor, *, terms: int, scale: torch.Tensor | float, name: str,
    upstream: torch.Tensor | float = 0.0, u: float = U32,
) -> None:
    """Asserts ``|actual - expected| <= 2 gamma_terms * scale + upstream`` element-wise (module docstring).

    ``terms``: the number of float32 terms summed (over the whole chain of sums, when the terms come from
    earlier sums); ``scale``: ``sum |t_i|`` for each element (a tensor broadcastable to ``expected``) or a
    bound for all of them; ``upstream``: a difference the inputs of the sum already carry, bounded in
    absolute terms by the caller. The message names the worst element relative to its tolerance.
    """
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    tol = sum_order_tolerance(terms, scale, u) + torch.as_tensor(upstream, dtype=torch.float64)
    tol = tol.expand_as(diff)
    bad = ~(diff <= tol)  # NaN fails too
    if bad.any():
        ratio = torch.where(bad, (diff / tol).nan_to_num(math.inf, math.inf), torch.zeros_like(diff))
        flat = int(ratio.flatten().argmax())
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {diff.numel()} values differ by more than the float32 sum-order "
            f"bound (2 gamma_{terms} sum|t_i| + upstream); worst at index {_index(flat, diff.shape)}: "
            f"actual {actual.flatten()[flat].item():.9g}, expected {expected.flatten()[flat].item():.9g}, "
            f"|diff| {diff.flatten()[flat].item():.3g} > tolerance {tol.flatten()[flat].item():.3g}"
        )


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Bitwise equality (NaNs in the same places), naming the worst element when it fails."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        raise AssertionError(
            f"{name}: {actual.dtype}{tuple(actual.shape)} != {expected.dtype}{tuple(expected.shape)}")
    if torch.equal(actual, expected):
        return
    unequal = actual != expected
    if actual.is_floating_point():
        unequal &= ~(actual.isnan() & expected.isnan())
        if not unequal.any():
            return
        diff = (actual.double() - expected.double()).abs().nan_to_num(math.inf, math.inf)
        flat = int(torch.where(unequal, diff, torch.full_like(diff, -1.0)).flatten().argmax())
    else:
        flat = int(unequal.flatten().nonzero()[0])
    raise AssertionError(
        f"{name}: not bitwise equal, {int(unequal.sum())} of {actual.numel()} values differ; worst at index "
        f"{_index(flat, actual.shape)}: actual {actual.flatten()[flat].item()!r}, "
        f"expected {expected.flatten()[flat].item()!r}"
    )


def gradient_term_sums(
    model: nn.Module, run: Callable[[], torch.Tensor]
) -> tuple[dict[str, tuple[torch.Tensor, int]], int]:
    """``run()`` (a forward returning the scalar loss) and its backward on ``model``, recording, for the
    gradient of every parameter of a convolution, linear or BatchNorm layer, ``sum |t_i|`` of the
    products the gradient sums and how many there are: ``{name: (scale, n)}``; and ``path_terms``,
    the summed lengths of every reduction of those layers, forward and backward: each layer's input
    fan-in (forward and input gradient) plus its reduction over the batch (BatchNorm's statistics, or the
    weight gradient). No chain of sums from the loss to a gradient is longer, so ``gamma(path_terms)``
    bounds the relative rounding of a gradient's factors as well as of its own sum (the module docstring).

    A conv weight gradient ``dW[o, i, a, b] = sum_{batch, y, x} dY[., o, y, x] X[., i, y + a, x + b]``
    sums ``batch * H_out * W_out`` products: its scale is the same weight gradient of ``|X|`` and
    ``|dY|``. A linear layer's sums over the rows of its input, BatchNorm's (training mode: the batch's
    statistics) over ``batch * H * W`` of ``dY * x_hat`` (weight) and ``dY`` (bias). The model's
    gradients are left as ``run``'s backward computed them.
    """
    records: dict[str, dict] = {}
    handles = []

    def keep_input(name):
        def hook(module, args):
            records.setdefault(name, {})["x"] = args[0].detach()
        return hook

    def keep_output_grad(name):
        def hook(module, args, output):
            out = args[0] if name.endswith("#pre-norm") else output
            out.register_hook(lambda g: records[name.split("#")[0]].__setitem__("dy", g.detach()))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm)):
            handles.append(module.register_forward_pre_hook(keep_input(name)))
            norm = getattr(module, "norm", None)
            if isinstance(module, nn.Conv2d) and norm is not None:
                # detectron2's Conv2d applies its norm inside forward: the norm's input is the
                # conv's own output.
                handles.append(norm.register_forward_hook(keep_output_grad(f"{name}#pre-norm")))
            else:
                if getattr(module, "activation", None) is not None:
                    raise ValueError(f"{name}: a conv with a fused activation and no norm is not supported")
                handles.append(module.register_forward_hook(keep_output_grad(name)))
    try:
        model.zero_grad()
        run().backward()
    finally:
        for h in handles:
            h.remove()

    scales: dict[str, tuple[torch.Tensor, int]] = {}
    path_terms = 0
    modules = dict(model.named_modules())
    for name, rec in records.items():
        module, x, dy = modules[name], rec["x"].double().abs(), rec["dy"].double().abs()
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d):
            n = dy.shape[0] * dy.shape[2] * dy.shape[3]
            w = torch.nn.grad.conv2d_weight(x, module.weight.shape, dy, module.stride, module.padding,
                                            module.dilation, module.groups)
            scales[prefix + "weight"] = (w, n)
            fan_in = module.weight[0].numel()
            if module.bias is not None:
                scales[prefix + "bias"] = (dy.sum(dim=(0, 2, 3)), n)
        elif isinstance(module, nn.Linear):
            n = x.numel() // x.shape[-1]
            scales[prefix + "weight"] = (dy.reshape(n, -1).T @ x.reshape(n, -1), n)
            fan_in = module.in_features
            if module.bias is not None:
                scales[prefix + "bias"] = (dy.reshape(n, -1).sum(0), n)
        else:  # BatchNorm (1d, 2d) in training mode: statistics over every dimension but the channels'
            dims = (0, *range(2, x.dim()))
            n = x.numel() // x.shape[1]
            fan_in = n  # the statistics' sums, forward and backward
            raw = rec["x"].double()
            mean = raw.mean(dim=dims, keepdim=True)
            var = raw.var(dim=dims, unbiased=False, keepdim=True)
            x_hat = ((raw - mean) / (var + module.eps).sqrt()).abs()
            if module.weight is not None:
                scales[prefix + "weight"] = ((dy * x_hat).sum(dim=dims), n)
                scales[prefix + "bias"] = (dy.sum(dim=dims), n)
        path_terms += 2 * (fan_in + n)
    return scales, path_terms


def forward_terms(model: nn.Module) -> int:
    """An upper bound on the summed lengths of the float32 sums of one eval-mode forward pass of
    ``model``, along any path: every conv/linear fan-in (counted even where branches run in parallel),
    and two for each other module (BatchNorm's scale and shift, a residual sum).

    For a forward pass the componentwise bound ``gamma_n |W_L| ... |W_1| |x|`` is vacuous in a deep
    network (measured on the tests' ResNet-18 trunk: 1e14 times the res5 features, as ``|W|`` does not
    keep the unit scale that BatchNorm and He initialisation keep for ``W``). Tests of features use the
    normwise first-order form instead: each layer's rounding is at most gamma of its fan-in relative to
    its output scale, and the layers pass it on at gain ~1, so ``2 gamma(forward_terms) max |y|``.
    """
    terms = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            terms += module.weight[0].numel() + 1
        else:
            terms += 2
    return terms


def assert_within_bound(
    actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor | float, *, name: str, what: str
) -> None:
    """Asserts ``|actual - expected| <= bound`` element-wise, for a bound the caller derived (``what``
    says which, for the message); like ``assert_close_sum_order``, a failure names the worst element
    relative to its bound, both values, the difference and the bound."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs()
    tol = torch.as_tensor(bound, dtype=torch.float64).expand_as(diff)
    bad = ~(diff <= tol)  # NaN fails too
    if bad.any():
        ratio = torch.where(bad, (diff / tol).nan_to_num(math.inf, math.inf), torch.zeros_like(diff))
        flat = int(ratio.flatten().argmax())
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {diff.numel()} values differ by more than {what}; worst at index "
            f"{_index(flat, diff.shape)}: actual {actual.flatten()[flat].item():.9g}, expected "
            f"{expected.flatten()[flat].item():.9g}, |diff| {diff.flatten()[flat].item():.3g} > bound "
            f"{tol.flatten()[flat].item():.3g}"
        )


def assert_features_close(
    actual: torch.Tensor, expected: torch.Tensor, model: nn.Module, *, pooled_cells: int, name: str
) -> None:
    """Features of ``model`` (eval mode) computed twice, by another batch size or kernel (another sum
    order), within the normwise bound of ``forward_terms``: ``2 gamma_n max |expected|``, ``n`` the
    model's fan-ins and norms along the path plus the ``pooled_cells`` averaged into each feature."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert_close_sum_order(actual, expected, terms=forward_terms(model) + pooled_cells,
                           scale=float(expected.abs().max()), name=name)
