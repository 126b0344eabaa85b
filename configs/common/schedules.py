"""Learning-rate multipliers in units of epochs, independent of max_iter (detectron2's LRMultiplier
maps iteration / max_iter onto them), so overriding train.epochs or max_iter keeps their shape."""

import math

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler


def multistep(milestones, num_epochs, gamma=0.1):
    values = [gamma**i for i in range(len(milestones) + 1)]
    return L(MultiStepParamScheduler)(values=values, milestones=list(milestones), num_updates=num_epochs)


def warmup_multistep(milestones, num_epochs, warmup_epochs, warmup_factor):
    """Linear warm-up from ``warmup_factor`` x lr to lr over ``warmup_epochs`` (stepped every iteration),
    then a multistep. (Not VISSL's warm-up rule: see d2ssl.engine.schedules.vissl_warmup_multistep.)"""
    return L(WarmupParamScheduler)(
        scheduler=multistep(milestones=milestones, num_epochs=num_epochs),
        warmup_factor=warmup_factor,
        warmup_length=warmup_epochs / num_epochs,
        warmup_method="linear",
        rescale_interval=False,
    )


def cosine(end_value=0.0):
    return L(CosineParamScheduler)(start_value=1.0, end_value=end_value)


def cosine_per_epoch(num_epochs, end_value=0.0):
    # A cosine updated once per epoch, as MoCo/JigClu's adjust_learning_rate (no warmup): epoch e of
    # num_epochs runs at end + (1 - end) * 0.5 * (1 + cos(pi * e / num_epochs)).
    half_cosines = [0.5 * (1 + math.cos(math.pi * e / num_epochs)) for e in range(num_epochs)]
    values = [end_value + (1 - end_value) * c for c in half_cosines]
    # A multistep with one milestone per epoch (fvcore's StepParamScheduler fails at the end, where=1).
    milestones = list(range(1, num_epochs))
    return L(MultiStepParamScheduler)(values=values, milestones=milestones, num_updates=num_epochs)
