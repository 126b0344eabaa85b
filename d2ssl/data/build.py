"""Training data loader with a reproducible, resumable sample stream.

Every sample is identified by its position in an infinite stream: position ``p`` belongs to epoch
``p // N`` and holds image ``perm_epoch[p % N]``, where ``perm_epoch`` is a permutation seeded by
``(seed, epoch)``. Its augmentations are drawn from a ``torch.Generator`` seeded by ``(seed, p)``.
So the views of a sample do not depend on the number of workers or ranks, and resuming at
iteration ``i`` continues the same stream at position ``i * total_batch_size``: the data order
and augmentations of a resumed run are those of an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from detectron2.data.build import trivial_batch_collator, worker_init_reset_seed
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from d2ssl.data.image_io import BadImageError

logger = logging.getLogger(__name__)

Mapper = Callable[[dict, torch.Generator], dict]


def sample_seed(seed: int, position: int) -> int:
    """Seed of the augmentation generator of stream position ``position``."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1, np.uint64)[0] >> 1)


class ResumableTrainingSampler(torch.utils.data.Sampler):
    """Infinite stream of ``(dataset_index, stream_position)`` for one rank.

    Rank ``r`` of ``W`` takes positions ``r, r+W, r+2W, ...`` of the global stream starting at
    ``start_position``; ``set_start_iter`` moves the start (the trainer's resume hook calls it).
    """

    def __init__(self, size: int, total_batch_size: int, seed: int = 0, shuffle: bool = True):
        if size <= 0:
            raise ValueError(f"cannot sample from an empty data set (size={size})")
        self.size = size
        self.total_batch_size = total_batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.start_position = 0

    def set_start_iter(self, start_iter: int) -> None:
        self.start_position = start_iter * self.total_batch_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start_position + self.rank
        epoch, order = -1, None
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                order = self.epoch_order(epoch)
            yield int(order[position % self.size]), position
            position += self.world_size


class SeededMapDataset(torch.utils.data.Dataset):
    """Applies ``mapper(dict, generator)`` to the item named by ``(index, stream_position)``.

    An image the mapper rejects with ``BadImageError`` (unreadable, or too small for the recipe) is
    replaced by the next one in the data set, with a generator that depends only on the stream
    position and the attempt, so the replacement is the same in every run and worker. Each skip is
    logged with the running count. Once at least ``min(min_reads_before_check, len(dataset))``
    images were read, more than ``max_bad_fraction`` of them failing raises ``BadImageError``
    naming up to five of the failures: a mostly-broken data set stops instead of training on the
    few readable images. With ``num_workers > 0`` each worker counts the reads it made.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Mapper,
        seed: int = 0,
        max_bad_fraction: float = 0.1,
        min_reads_before_check: int = 50,
    ):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
        self.dataset = DatasetFromList(list(dataset), copy=False, serialize=True)
        self.mapper = mapper
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.min_reads_before_check = min(min_reads_before_check, len(self.dataset))
        self.num_reads = 0
        self.num_bad = 0
        self.bad_examples: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        for attempt in range(len(self.dataset)):
            idx = (index + attempt) % len(self.dataset)
            generator = torch.Generator().manual_seed(sample_seed(self.seed, position) + attempt)
            self.num_reads += 1
            try:
                # The serialized list unpickles a fresh dict per access: the mapper may change it.
                out = self.mapper(self.dataset[idx], generator)
            except BadImageError as e:
                self._record_bad(idx, str(e))
                continue
            out.setdefault("stream_position", position)
            return out
        raise BadImageError(f"none of the {len(self.dataset)} images of the data set can be used. "
                            f"Examples:\n  {self._examples()}")

    def _examples(self) -> str:
        return "\n  ".join(self.bad_examples.values())

    def _record_bad(self, idx: int, message: str) -> None:
        self.num_bad += 1
        if len(self.bad_examples) < 5:
            self.bad_examples[idx] = message
        logger.warning(
            "skipped image %d (%d of %d read so far failed): %s", idx, self.num_bad, self.num_reads, message
        )
        if (
            self.num_reads >= self.min_reads_before_check
            and self.num_bad > self.max_bad_fraction * self.num_reads
        ):
            raise BadImageError(
                f"{self.num_bad} of {self.num_reads} images read failed, more than "
                f"max_bad_fraction={self.max_bad_fraction}: the data set looks broken. Examples:\n  "
                f"{self._examples()}"
            )


def build_ssl_train_loader(
    dataset: Sequence[dict],
    mapper: Mapper,
    total_batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    max_bad_fraction: float = 0.1,
) -> torch.utils.data.DataLoader:
    """An infinite loader of lists of mapped dicts, ``total_batch_size // world_size`` per rank.

    ``loader.batch_sampler.sampler`` is the ``ResumableTrainingSampler``; call its
    ``set_start_iter`` before iterating to resume. Unusable images are skipped and counted; more
    than ``max_bad_fraction`` of them stops the run (``SeededMapDataset``).
    """
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"dataloader.train.total_batch_size={total_batch_size} must be a positive multiple of the "
            f"number of processes ({world_size})"
        )
    sampler = ResumableTrainingSampler(len(dataset), total_batch_size, seed=seed)
    batch_sampler = torch.utils.data.BatchSampler(sampler, total_batch_size // world_size, drop_last=True)
    return torch.utils.data.DataLoader(
        SeededMapDataset(dataset, mapper, seed=seed, max_bad_fraction=max_bad_fraction),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
        persistent_workers=False,
        # Without its own generator, creating the loader's iterator draws from torch's global RNG:
        # a resumed run (iterator created after the RNG state is restored) would then diverge from
        # an uninterrupted one in every random choice the model makes.
        generator=torch.Generator().manual_seed(seed),
    )
