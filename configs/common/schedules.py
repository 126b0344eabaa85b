"""Learning-rate multipliers in units of epochs, independent of max_iter (detectron2's LRMultiplier
maps iteration / max_iter onto them), so overriding train.epochs or max_iter keeps their shape."""

from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler


def multistep(milestones, num_epochs, gamma=0.1):
    values = [gamma**i for i in range(len(milestones) + 1)]
    return L(MultiStepParamScheduler)(values=values, milestones=list(milestones), num_updates=num_epochs)


def cosine(end_value=0.0):
    return L(CosineParamScheduler)(start_value=1.0, end_value=end_value)
