# Jigsaw with 100 permutations, VISSL's configs/config/pretrain/jigsaw/permutations/perm100.yaml
# (IN-1k linear top-1 in VISSL's zoo: 48.57 with Noroozi's 100). VISSL's published 100-permutation file is
# Noroozi's own set, naroozi_perms_100_patches_9_max.npy (VISSL's list of data files, "Jigsaw Permutations");
# without it this config generates 100 maximal-Hamming permutations from its seed. For that file:
# dataloader.train.mapper.permutations.path=/path/to/naroozi_perms_100_patches_9_max.npy (used as given).
from .jigsaw_R50 import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (LazyConfig exports every section)

NUM_PERMUTATIONS = 100
dataloader.train.mapper.permutations.update(
    num_permutations=NUM_PERMUTATIONS, path="output/jigsaw_R50_perm100/permutations_100_9.npy"
)
model.head.on_concat.dims = [model.head.on_concat.dims[0], NUM_PERMUTATIONS]
train.output_dir = "output/jigsaw_R50_perm100"
