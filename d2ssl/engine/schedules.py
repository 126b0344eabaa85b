"""Learning-rate schedules that reproduce what a reference code base computed, not what its config says.

VISSL's composite schedules with a linear warm-up are rewritten before training by
``vissl/utils/hydra_config.py`` (commit 09270ed): ``infer_learning_rate`` (l. 342-381) scales every value
by ``global batch / base_lr_batch_size`` and sets the linear phase's ``end_value`` to that scaled lr
(``get_scaled_lr_scheduler``, l. 330); ``resolve_linear_schedule`` (l. 227-268) then replaces the
linear phase's ``start_value`` with ``base_value * batch_size_per_node / base_lr_batch_size`` (l. 252;
the yaml's own ``start_value`` is never used) and, on one node, deletes the phase when ``start <= end``
(l. 253-261), which is always the case there (one node: the per-node batch is the global batch). The
deleted phase's ``lengths`` entry stays, and the remaining multistep becomes the whole schedule (its
milestones were already in epochs of the whole run, ``interval_scaling: fixed``). So a VISSL run on
one node has no warm-up at all, and on ``n`` nodes it warms up from ``1/n`` of the scaled lr.

d2ssl's multipliers are relative to ``optimizer.lr``, which ``scale_to_world_size`` makes the scaled lr.
"""

from __future__ import annotations

from collections.abc import Sequence

from detectron2.utils import comm
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
)


def vissl_linear_warmup_start(
    base_value: float, base_lr_batch_size: int, batch_size_per_node: int, num_nodes: int, end_value: float
) -> float | None:
    """The start lr VISSL's ``resolve_linear_schedule`` gives a linear warm-up phase ending at
    ``end_value`` (the scaled lr), or None where it deletes the phase (one node and start <= end)."""
    start_value = base_value * (float(batch_size_per_node) / base_lr_batch_size)
    if num_nodes == 1 and start_value <= end_value:
        return None
    return start_value


def vissl_warmup_multistep(
    milestones: Sequence[int],
    num_epochs: int,
    warmup_length: float,
    total_batch_size: int,
    num_nodes: int | None = None,
    gamma: float = 0.1,
) -> MultiStepParamScheduler:
    """What VISSL ran for ``composite: [linear, multistep]`` with ``update_interval: epoch``, as a
    per-epoch multiplier of the scaled lr.

    Args:
        milestones: the multistep's milestones in epochs (VISSL ``interval_scaling: fixed``).
        num_epochs: VISSL's ``OPTIMIZER.num_epochs``.
        warmup_length: VISSL's ``lengths[0]``, the fraction of training given to the linear phase.
        total_batch_size: the global batch (after d2ssl's linear scaling to the actual processes).
        num_nodes: machines; None reads it from the launched job (processes / processes per machine).
        gamma: the multistep's ratio between consecutive values.

    The lr changes only at epoch starts (VISSL's ``update_interval: epoch``: epoch ``e`` runs at the
    value for ``where = e / num_epochs``); fvcore's composite and multistep, ports of classy_vision's
    that VISSL used, pick the value, with their ``WHERE_EPSILON``.
    """
    if num_nodes is None:
        num_nodes = max(1, comm.get_world_size() // comm.get_local_size())
    num_nodes, num_epochs = int(num_nodes), int(num_epochs)
    if num_nodes < 1 or total_batch_size % num_nodes:
        raise ValueError(
            f"total_batch_size={total_batch_size} must split evenly over num_nodes={num_nodes} machines"
        )
    if not 0 < warmup_length < 1:
        raise ValueError(f"warmup_length={warmup_length} must be a fraction of training in (0, 1)")
    steps = MultiStepParamScheduler(
        values=[gamma**i for i in range(len(milestones) + 1)],
        milestones=list(milestones),
        num_updates=num_epochs,
    )
    # In units of the scaled lr (base_value 1 for base_lr_batch_size = total): end 1, start the node's share.
    start = vissl_linear_warmup_start(1.0, total_batch_size, total_batch_size // num_nodes, num_nodes, 1.0)
    if start is None:
        schedule = steps
    else:
        schedule = CompositeParamScheduler(
            [LinearParamScheduler(start, 1.0), steps],
            lengths=[warmup_length, 1.0 - warmup_length],
            interval_scaling=["rescaled", "fixed"],
        )
    values = [schedule(e / num_epochs) for e in range(num_epochs)]
    # One value per epoch as a multistep (milestones where the value changes), as cosine_per_epoch.
    changes = [e for e in range(1, num_epochs) if values[e] != values[e - 1]]
    return MultiStepParamScheduler(
        values=[values[0]] + [values[e] for e in changes], milestones=changes, num_updates=num_epochs
    )
