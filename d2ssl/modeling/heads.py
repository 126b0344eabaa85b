"""Projection and classification heads shared by the methods."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def mlp_head(
    dims: Sequence[int],
    use_bn: bool = False,
    use_relu: bool = True,
    last_layer_bn_relu: bool = False,
) -> nn.Sequential:
    """VISSL's ``mlp`` head: ``Linear(d0, d1) [BN] [ReLU] ... Linear(d_{n-1}, d_n)``.

    ``dims=[2048, 128]`` is the linear projection of NPID/PIRL; ``[2048, 2048, 128]`` the MLP variant.
    The last layer gets BN/ReLU only with ``last_layer_bn_relu`` (VISSL's
    ``skip_last_layer_relu_bn=False``, used by the per-tile layer of the Jigsaw head).
    """
    if len(dims) < 2:
        raise ValueError(f"mlp_head needs at least [in_dim, out_dim], got dims={list(dims)}")
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or last_layer_bn_relu:
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out))
            if use_relu:
                layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TileConcatHead(nn.Module):
    """Embeds each of ``T`` tiles, concatenates the embeddings in slot order and maps them to an output.

    ``(N * T, D) -> per_tile -> (N * T, E) -> view (N, T * E) -> on_concat -> (N, out)``: VISSL's
    ``mlp`` + ``siamese_concat_view`` + ``mlp`` stack, used by Jigsaw (out = number of permutations)
    and by PIRL's patch branch (out = embedding dim).
    """

    def __init__(self, per_tile: nn.Module, on_concat: nn.Module, num_tiles: int):
        super().__init__()
        self.per_tile = per_tile
        self.on_concat = on_concat
        self.num_tiles = num_tiles

    def forward(self, tile_features):
        embedded = self.per_tile(tile_features)
        return self.on_concat(embedded.view(-1, self.num_tiles * embedded.shape[1]))
