import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

# SGD as in every VISSL pretraining config: momentum 0.9, weight decay 1e-4, no weight decay on
# BatchNorm parameters (VISSL's regularize_bn: False), weight decay on biases (regularize_bias: True).
SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    nesterov=False,
)
