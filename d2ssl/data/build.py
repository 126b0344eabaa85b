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
import math
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


# Confidence of the early stop on bad images: Hoeffding's bound on the data set's fraction of bad
# images from the distinct images read so far, at level delta / (n (n + 1)) after n reads, so that
# over all the checks of a run the chance of stopping a data set within the bound stays below delta.
BAD_FRACTION_CONFIDENCE = 0.999


class SeededMapDataset(torch.utils.data.Dataset):
    """Applies ``mapper(dict, generator)`` to the item named by ``(index, stream_position)``.

    An image the mapper rejects with ``BadImageError`` (unreadable, or too small for the recipe) is
    replaced by another image drawn at random from a generator seeded by ``(seed, stream_position)``,
    so the replacement is the same in every run, worker and resume, and a run of adjacent bad files
    is not read again and again. A bad file is remembered and never decoded again (drawing it just
    draws again); it is logged once, with the counts so far.

    Counts are of distinct files: ``num_bad`` of the ``num_read`` distinct images read failed. The
    run stops with ``BadImageError`` (naming both numbers and up to five failures) when more than
    ``max_bad_fraction`` of the images *of the data set* are known to be bad, or earlier, once at
    least ``min(min_reads_before_check, len(dataset))`` distinct images were read, when the bad
    fraction among them shows with 99.9% confidence (Hoeffding, over all checks of the run; the
    sampler reads images in random order) that the data set's fraction is above ``max_bad_fraction``.
    A data set with no more bad images than that is not stopped by the first rule, and by the second
    with a chance below 0.1% (e.g. 17 unreadable files of 217 in one class folder, default 0.1).
    With ``num_workers > 0`` each worker counts its own reads:
    a worker knows a subset of the bad files, so a stop is still never a false alarm, but it may come
    later than with one process.
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
        self.read: set[int] = set()  # distinct indices decoded
        self.bad: dict[int, str] = {}  # distinct indices that failed -> why

    @property
    def num_read(self) -> int:
        return len(self.read)

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        idx, replacements = index, None
        attempt = 0
        while len(self.bad) < len(self.dataset):
            if idx not in self.bad:
                generator = torch.Generator().manual_seed(sample_seed(self.seed, position) + attempt)
                self.read.add(idx)
                try:
                    # The serialized list unpickles a fresh dict per access: the mapper may change it.
                    out = self.mapper(self.dataset[idx], generator)
                except BadImageError as e:
                    self._record_bad(idx, str(e))
                else:
                    out.setdefault("stream_position", position)
                    return out
            if replacements is None:
                replacements = np.random.default_rng([self.seed, position, 1])
            idx = int(replacements.integers(len(self.dataset)))
            attempt += 1
        raise BadImageError(f"none of the {len(self.dataset)} images of the data set can be used. "
                            f"Examples:\n  {self._examples()}")

    def _examples(self) -> str:
        return "\n  ".join(list(self.bad.values())[:5])

    def _record_bad(self, idx: int, message: str) -> None:
        self.bad[idx] = message
        bad, read, total = len(self.bad), len(self.read), len(self.dataset)
        logger.warning("skipped image %d (%d of the %d distinct images read so far failed): %s",
                       idx, bad, read, message)
        if bad > self.max_bad_fraction * total:
            reason = f"more than max_bad_fraction={self.max_bad_fraction} of the data set's {total} images"
        elif read >= self.min_reads_before_check and self._surely_above_bound(bad, read):
            reason = (f"so many that, with {BAD_FRACTION_CONFIDENCE:.1%} confidence, more than "
                      f"max_bad_fraction={self.max_bad_fraction} of the data set's {total} images fail")
        else:
            return
        if bad == total:
            return  # __getitem__ says that none can be used
        raise BadImageError(
            f"{bad} of the {read} distinct images read failed: {reason}; the data set looks broken. "
            f"Examples:\n  {self._examples()}"
        )

    def _surely_above_bound(self, bad: int, read: int) -> bool:
        delta = (1.0 - BAD_FRACTION_CONFIDENCE) / (read * (read + 1))
        return bad / read - math.sqrt(math.log(1.0 / delta) / (2.0 * read)) > self.max_bad_fraction


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
    ``set_start_iter`` before iterating to resume. Unusable images are replaced and counted; more
    than ``max_bad_fraction`` of the data set's images failing stops the run (``SeededMapDataset``).
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
