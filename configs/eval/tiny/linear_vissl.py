# CPU-sized VISSL linear benchmark (configs/eval/linear_vissl_R50.py's seven heads and optimizer) on
# Fashion-MNIST with the tiny trunk at 64 px. The pool ops are scaled to the tiny maps (conv1 32 px,
# res2 16, res3 8, res4 4, res5 2) to keep a few spatial cells per layer instead of VISSL's ~9k dims,
# and lr 0.01 per 64 images instead of per 256 so 300 steps converge (measured: at 0.03 the plain
# Linear on the unnormalised res5avg of a random trunk diverges; the BatchNorm heads would take more).
from ...common.models import tiny_trunk
from ...common.schedules import multistep
from ..linear_vissl_R50 import model, optimizer  # noqa: F401
from .linear import dataloader, train  # noqa: F401

model.trunk = tiny_trunk()
model.num_classes = 10
model.input_size = 64
for name, pool in {"conv1": (8, 8, 0), "res2": (8, 4, 0), "res3": (4, 2, 0), "res4": (2, 2, 0),
                   "res5": (1, 1, 0)}.items():
    model.heads[name].pool = pool

optimizer.lr = 0.01
lr_multiplier = multistep(milestones=[8, 16, 24], num_epochs=28)
train.output_dir = "output/tiny_linear_vissl"
