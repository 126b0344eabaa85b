"""Fitting a model to one fixed batch of mapped real images: the meta-architecture tests' learning check."""

from __future__ import annotations

import torch
from detectron2.config import instantiate

from d2ssl.data.build import SeededMapDataset


def mapped_batch(cfg, images: list[dict]) -> list[dict]:
    """``images`` through ``cfg``'s training mapper, sample ``i`` seeded by stream position ``i``."""
    dataset = SeededMapDataset(images, instantiate(cfg.dataloader.train.mapper), seed=0)
    return [dataset[(i, i)] for i in range(len(images))]


def fit_fixed_batch(model, batch: list[dict], loss_name: str, steps: int, lr: float) -> list[float]:
    """``steps`` SGD steps (momentum 0.9) on ``model(batch)[loss_name]``; returns the loss per step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(batch)[loss_name]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
