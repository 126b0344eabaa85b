# NPID++ (Misra & van der Maaten 2019, sec. 4), VISSL's
# configs/config/pretrain/npid/npid++_4nodes_resnet.yaml: NPID with 4 nodes x 8 GPUs x 32 = 1024
# images, 32000 negatives, 800 epochs, lr 0.12 (0.03 per 256) with a cosine to 0.00012 updated per
# epoch. IN-1k linear top-1 in VISSL's zoo: 56.68.
from .common.schedules import cosine_per_epoch
from .npid_R50 import dataloader, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

dataloader.train.total_batch_size = 1024
model.loss.negative_sampling_params.num_negatives = 32000
optimizer.lr = 0.12
lr_multiplier = cosine_per_epoch(num_epochs=800, end_value=0.001)
train.epochs = 800
train.reference_world_size = 32
train.output_dir = "output/npid_pp_R50"
