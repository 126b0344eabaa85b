"""NCE / InfoNCE against a memory bank of one embedding per training image (NPID, NPID++, PIRL).

The semantics are those of VISSL's ``nce_loss_with_memory`` (``vissl/losses/nce_loss.py``, after
lemniscate.pytorch), with the same parameter names::

    loss = NCELossWithMemory(num_train_samples=len(dataset), temperature=0.07,
                             negative_sampling_params={"num_negatives": 4096},
                             memory_params={"embedding_dim": 128, "momentum": 0.5})
    total = loss([embedding], image_ids)          # embedding (B, 128), image_ids (B,) int64
    total.backward()                              # the bank row of every image_id was updated too

For each embedding ``l`` (PIRL passes two: patches and image), with ``v = normalize(embedding_l)``,
``m_i`` the bank row of image ``i``, ``y`` the image's own index and ``K`` random negatives ``n_k``:

- ``loss_type="nce"`` (NCE, Gutmann & Hyvarinen 2010, as in Wu et al. 2018):
  ``P(i) = exp(v.m_i / T) / Z`` with ``Z = N * mean(exp(v.m / T))`` estimated once, from the first
  batch (positives and negatives, averaged over ranks), when ``norm_constant=-1``; with the noise
  probability ``Pn = 1 / N`` (``N`` = memory size) and ``eps`` = float32 epsilon,
  ``loss_l = -mean_b[ log(P(y) / (P(y) + K Pn + eps)) + sum_k log(K Pn / (P(n_k) + K Pn + eps)) ]``
  (summed over negatives, averaged over the batch).
- ``loss_type="cross_entropy"`` (InfoNCE): cross-entropy of the logits ``[v.m_y, v.m_n1, ...] / T``
  with the positive as class 0, averaged over the batch.

The total is ``sum_l loss_weights[l] * loss_l`` (no division by the sum of the weights). Scores use
the bank as it was before the update of the same embedding. The update is
``m_y <- normalize(momentum * m_y + (1 - momentum) * v)``: after every embedding when
``update_mem_on_forward``, otherwise only after embedding ``update_mem_with_emb_index`` (PIRL: 1,
the image branch).

State: the bank (``memory``, ``(N, D)``) and ``Z`` (``norm_constant``) are buffers, so checkpoints
save and restore them and ``.to(device)`` moves them; nothing else persists between calls.

Data parallelism: every rank holds the whole bank. It starts identical on all ranks (drawn from a
generator seeded with ``memory_params["init_seed"]``, not from the rank's random state, and checked
on the first call) and every rank applies the same update, computed from the embeddings and indices
of all ranks (``all_gather``), so the banks never drift apart. VISSL instead draws a different bank on
each rank and averages them once (``all_reduce_mean``), which leaves the initial rows with norm about
``1/sqrt(world_size)`` rather than 1 even with ``norm_init``.

Negatives are drawn uniformly with replacement, independently for each sample and embedding. With
``negative_sampling_params["exclude_positive"]=True`` (this class's default, d2ssl's option) they are
drawn from the ``N - 1`` rows other than the sample's own; ``False`` draws from all ``N`` rows, so the
positive can come back as a negative, as VISSL does (``nce_loss.py`` l. 290-311 at commit 09270ed:
``AliasMethod`` over uniform unigrams). Every config that cites a VISSL number (``configs/npid*.py``,
``configs/pirl*.py``) sets ``False``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from d2ssl.utils.distributed import all_gather_rows
from d2ssl.utils.events import log_metrics

LOSS_TYPES = ("nce", "cross_entropy")
NEGATIVE_SAMPLING_DEFAULTS = {"num_negatives": 16000, "type": "random", "exclude_positive": True}
MEMORY_DEFAULTS = {
    "memory_size": -1,
    "embedding_dim": 128,
    "momentum": 0.5,
    "norm_init": True,
    "update_mem_on_forward": True,
    "init_seed": 0,
    "dtype": "float32",
}
# lemniscate/VISSL add float32's epsilon to the NCE denominators.
NCE_EPS = float(np.finfo(np.float32).eps)


SCORINGS = ("auto", "gather", "bank")
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# "auto" scores against the whole bank when it has fewer than this many rows per gathered row of one
# sample: a dense (B, N) matrix product runs ~40x more multiply-adds per second than gathering rows
# (measured on CPU; the ratio is higher on GPUs), so it wins up to about N = 16 (K + 1).
BANK_SCORING_ROWS_PER_NEGATIVE = 16
# Rows gathered at once by the chunked paths (16k rows of 128 floats: 8 MiB, cache-sized) and entries
# of one (b, N) block of whole-bank scores (32 Mi floats: 128 MiB): what bounds the extra memory.
GATHER_CHUNK_ROWS = 16384
BANK_CHUNK_ENTRIES = 1 << 25


def _chunks(batch: int, per_row: int, budget: int) -> list[tuple[int, int]]:
    step = max(1, budget // max(per_row, 1))
    return [(i, min(i + step, batch)) for i in range(0, batch, step)]


def _gathered_scores(v: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    # A few samples at a time: their (b, K+1, D) rows stay in cache, instead of one (B, K+1, D) tensor
    # (2 GiB at B 256, K 16000) written then read back. index_select on flat indices, not memory[rows].
    out = torch.empty(rows.shape, dtype=v.dtype, device=v.device)
    for lo, hi in _chunks(rows.shape[0], rows.shape[1], GATHER_CHUNK_ROWS):
        w = memory.index_select(0, rows[lo:hi].flatten()).view(hi - lo, rows.shape[1], -1)
        out[lo:hi] = torch.bmm(w.to(v.dtype), v[lo:hi].unsqueeze(2)).squeeze(2)
    return out


def _whole_bank_scores(v: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty(rows.shape, dtype=v.dtype, device=v.device)
    for lo, hi in _chunks(rows.shape[0], memory.shape[0], BANK_CHUNK_ENTRIES):
        out[lo:hi] = (v[lo:hi] @ memory.T.to(v.dtype)).gather(1, rows[lo:hi])
    return out


def bank_rows_weighted_sum(weights: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out[b] = sum_k weights[b, k] * memory[rows[b, k]]``, ``(B, D)`` in ``weights``' dtype: the
    gradient of :func:`bank_scores` for the embeddings, without a gathered ``(B, R, D)`` tensor."""
    if memory.dtype == weights.dtype:
        return F.embedding_bag(rows, memory, mode="sum", per_sample_weights=weights.contiguous())
    out = weights.new_empty(rows.shape[0], memory.shape[1])
    for lo, hi in _chunks(rows.shape[0], rows.shape[1], GATHER_CHUNK_ROWS):
        w = memory.index_select(0, rows[lo:hi].flatten()).view(hi - lo, rows.shape[1], -1)
        out[lo:hi] = torch.bmm(weights[lo:hi].unsqueeze(1), w.to(weights.dtype)).squeeze(1)
    return out


def score_dtype(memory: torch.Tensor) -> torch.dtype:
    """Scores are computed in the bank's precision, at least float32 (a half-precision bank is read
    into float32: exp(v.m / T) overflows fp16)."""
    return torch.promote_types(memory.dtype, torch.float32)


@torch.no_grad()
def bank_scores(
    embedding: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor, scoring: str = "auto"
) -> torch.Tensor:
    """Scores ``(B, R)`` (in :func:`score_dtype`) of ``(B, D)`` embeddings against bank rows ``rows``
    ``(B, R)`` of ``memory`` ``(N, D)`` (float32, or a half-precision bank scored in float32). No
    autograd graph: the loss gets its gradient from :func:`bank_rows_weighted_sum`.

    Equal (to float32 rounding) to VISSL's ``torch.bmm(memory[rows], v)``, without materialising the
    ``(B, R, D)`` gathered rows: ``"gather"`` scores a few samples' rows at a time; ``"bank"`` multiplies
    by the whole bank in ``(b, N)`` blocks and picks the ``R`` scores of each row, fastest when the bank
    is small next to the gathered rows; ``"auto"`` picks by ``BANK_SCORING_ROWS_PER_NEGATIVE``.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    v = embedding.to(score_dtype(memory))
    if scoring == "auto":
        small_bank = memory.shape[0] < BANK_SCORING_ROWS_PER_NEGATIVE * rows.shape[1]
        whole_bank = small_bank and memory.dtype == v.dtype
    else:
        whole_bank = scoring == "bank"
    return (_whole_bank_scores if whole_bank else _gathered_scores)(v, memory, rows)


class _PrecomputedGradient(torch.autograd.Function):
    """Returns ``value`` (0-dim) with ``d value / d v = grad_v``, computed in the forward pass.

    The bank rows a loss was scored against are updated in place right after scoring; computing the
    gradient then (a weighted sum of the same rows) needs neither a saved copy of the ``(B, K+1, D)``
    rows, as autograd through ``memory[rows]`` keeps, nor the bank as it was."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, value: torch.Tensor, grad_v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad_v)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_v,) = ctx.saved_tensors
        return grad_output * grad_v, None, None


def _with_defaults(name: str, given: Mapping | None, defaults: dict) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {name} keys {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **given}


class NCELossWithMemory(nn.Module):
    """NCE or InfoNCE of ``(B, D)`` embeddings against a ``(N, D)`` memory bank (see the module doc).

    Args:
        num_train_samples: number of training images (data set indices are ``0..num_train_samples-1``);
            ``-1`` in configs, filled in from the data set before the model is built.
        loss_type: ``"nce"`` or ``"cross_entropy"`` (InfoNCE).
        norm_embedding: L2-normalise the embeddings before scoring and updating.
        temperature: ``T`` of the scores ``v.m / T``.
        loss_weights: one weight per embedding passed to ``forward``.
        norm_constant: ``Z`` of the NCE probabilities; ``-1`` estimates it from the first batch.
        update_mem_with_emb_index: which embedding updates the bank when ``update_mem_on_forward``
            is False (PIRL: 1, the image embedding).
        negative_sampling_params: ``num_negatives`` (16000), ``type`` (only ``"random"``),
            ``exclude_positive`` (True; d2ssl's addition; False is VISSL's draw, see the module doc).
        memory_params: ``memory_size`` (``-1``: ``num_train_samples``), ``embedding_dim`` (128),
            ``momentum`` (0.5), ``norm_init`` (True: unit-norm initial rows),
            ``update_mem_on_forward`` (True), ``init_seed`` (0; d2ssl's addition: the seed of the
            initial bank, the same on every rank), ``dtype`` (``"float32"``; ``"float16"`` or
            ``"bfloat16"`` halve the bank's memory and gather traffic; scores, the loss and the update
            arithmetic stay float32, only the stored rows are rounded).
        scoring: how scores are computed, ``"auto"``, ``"gather"`` or ``"bank"`` (see
            :func:`bank_scores`); the same scores to float32 rounding either way.
    """

    def __init__(
        self,
        num_train_samples: int,
        loss_type: str = "nce",
        norm_embedding: bool = True,
        temperature: float = 0.07,
        loss_weights: Sequence[float] = (1.0,),
        norm_constant: float = -1,
        update_mem_with_emb_index: int = -100,
        negative_sampling_params: Mapping | None = None,
        memory_params: Mapping | None = None,
        scoring: str = "auto",
    ):
        super().__init__()
        sampling = _with_defaults(
            "negative_sampling_params", negative_sampling_params, NEGATIVE_SAMPLING_DEFAULTS
        )
        memory = _with_defaults("memory_params", memory_params, MEMORY_DEFAULTS)
        if num_train_samples is None or int(num_train_samples) <= 0:
            raise ValueError(
                f"num_train_samples={num_train_samples}: it must be the number of training images. "
                "d2ssl.engine.train_loop.do_train fills in -1 from the data set; set it yourself when "
                "building the loss outside do_train"
            )
        memory_size = int(num_train_samples if memory["memory_size"] in (-1, None) else memory["memory_size"])
        if memory_size < num_train_samples:
            raise ValueError(
                f"memory_params.memory_size={memory_size} is smaller than the number of training images "
                f"(num_train_samples={num_train_samples}): the bank needs one row per image; use -1"
            )
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if sampling["type"] != "random":
            raise ValueError(f"negative_sampling_params.type must be 'random', got {sampling['type']!r}")
        num_negatives = int(sampling["num_negatives"])
        candidates = memory_size - 1 if sampling["exclude_positive"] else memory_size
        if not 1 <= num_negatives <= candidates:
            raise ValueError(
                f"negative_sampling_params.num_negatives={num_negatives} must be between 1 and the number "
                f"of bank rows a negative can come from ({candidates}: memory size {memory_size}"
                f"{' minus the positive' if sampling['exclude_positive'] else ''})"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0 <= memory["momentum"] <= 1:
            raise ValueError(f"memory_params.momentum must be in [0, 1], got {memory['momentum']}")
        if int(memory["embedding_dim"]) < 1:
            raise ValueError(f"memory_params.embedding_dim must be positive, got {memory['embedding_dim']}")
        loss_weights = [float(w) for w in loss_weights]
        if not loss_weights:
            raise ValueError("loss_weights needs one weight per embedding, got an empty list")
        if not memory["update_mem_on_forward"] and not 0 <= update_mem_with_emb_index < len(loss_weights):
            raise ValueError(
                f"memory_params.update_mem_on_forward is False, so update_mem_with_emb_index must name one "
                f"of the {len(loss_weights)} embeddings (0..{len(loss_weights) - 1}), got "
                f"{update_mem_with_emb_index}: the bank would never be updated"
            )
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if memory["dtype"] not in BANK_DTYPES:
            raise ValueError(
                f"memory_params.dtype must be one of {sorted(BANK_DTYPES)}, got {memory['dtype']!r}"
            )
        if norm_constant != -1 and not norm_constant > 0:
            raise ValueError(f"norm_constant must be -1 (estimate) or positive, got {norm_constant}")

        self.num_train_samples = int(num_train_samples)
        self.loss_type = loss_type
        self.norm_embedding = bool(norm_embedding)
        self.temperature = float(temperature)
        self.loss_weights = loss_weights
        self.update_mem_with_emb_index = int(update_mem_with_emb_index)
        self.update_mem_on_forward = bool(memory["update_mem_on_forward"])
        self.num_negatives = num_negatives
        self.exclude_positive = bool(sampling["exclude_positive"])
        self.momentum = float(memory["momentum"])
        self.scoring = scoring
        bank = self._initial_memory(memory_size, memory).to(BANK_DTYPES[memory["dtype"]])
        self.register_buffer("memory", bank)
        # float64: exp(1 / T) * N overflows float32 for small temperatures.
        self.register_buffer("norm_constant", torch.tensor(float(norm_constant), dtype=torch.float64))
        self._checked_ranks_agree = False

    @staticmethod
    def _initial_memory(memory_size: int, memory: dict) -> torch.Tensor:
        # lemniscate's init: uniform in [-stdv, stdv], stdv = 1/sqrt(D/3), from a fixed-seed generator so
        # that every rank (and every run with the same seed) starts from the same bank.
        dim = int(memory["embedding_dim"])
        stdv = 1.0 / math.sqrt(dim / 3)
        generator = torch.Generator().manual_seed(int(memory["init_seed"]))
        bank = torch.rand(memory_size, dim, generator=generator).mul_(2 * stdv).sub_(stdv)
        return F.normalize(bank, dim=1) if memory["norm_init"] else bank

    @property
    def memory_size(self) -> int:
        return self.memory.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.memory.shape[1]

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type}, memory={tuple(self.memory.shape)}, "
            f"num_negatives={self.num_negatives}, exclude_positive={self.exclude_positive}, "
            f"temperature={self.temperature}, momentum={self.momentum}, loss_weights={self.loss_weights}"
        )

    def check_head(self, head: nn.Module, name: str) -> None:
        """Fails early when ``head``'s last ``nn.Linear`` does not output ``embedding_dim`` features."""
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if linears and linears[-1].out_features != self.embedding_dim:
            raise ValueError(
                f"{name} outputs {linears[-1].out_features} features but the memory bank holds "
                f"memory_params.embedding_dim={self.embedding_dim}: make them equal"
            )

    def sample_negatives(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B,)`` bank indices -> ``(B, K)`` uniformly drawn negative indices (without the sample's
        own index when ``exclude_positive``)."""
        shape = (indices.shape[0], self.num_negatives)
        if not self.exclude_positive:
            return torch.randint(0, self.memory_size, shape, device=self.memory.device, generator=generator)
        # Uniform over the N - 1 other rows: draw from 0..N-2 and skip over the positive.
        draw = torch.randint(0, self.memory_size - 1, shape, device=self.memory.device, generator=generator)
        return draw + (draw >= indices.view(-1, 1)).long()

    def logits(self, embedding: torch.Tensor, indices: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embedding (already normalised if wanted) -> ``(B, 1 + K)`` scores ``v.m / T`` of
        the positive (column 0) and the negatives (see :func:`bank_scores`); no autograd graph."""
        rows = self._rows(indices, negatives)
        return bank_scores(embedding, self.memory, rows, self.scoring) / self.temperature

    @staticmethod
    def _rows(indices: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return torch.cat([indices.view(-1, 1), negatives], dim=1)

    def _loss_of_logits(self, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.loss_type == "nce":
            return self.nce(logits)
        return F.cross_entropy(logits, torch.zeros_like(indices))

    def _scored_loss(self, v: torch.Tensor, indices: torch.Tensor, negatives: torch.Tensor, suffix: str):
        """The loss of one ``(B, D)`` embedding ``v``, with its gradient for ``v`` taken against the bank
        as scored (before this step's update)."""
        rows = self._rows(indices, negatives)
        logits = bank_scores(v.detach(), self.memory, rows, self.scoring) / self.temperature
        log_metrics(**{f"nce_top1{suffix}": (logits.argmax(dim=1) == 0).float().mean()})
        if self.loss_type == "nce" and self.norm_constant.item() < 0:
            self.estimate_norm_constant(logits)
        if not (v.requires_grad and torch.is_grad_enabled()):
            return self._loss_of_logits(logits, indices)
        with torch.enable_grad():
            logits.requires_grad_(True)
            loss = self._loss_of_logits(logits, indices)
            (grad_logits,) = torch.autograd.grad(loss, logits)
        grad_v = bank_rows_weighted_sum(grad_logits / self.temperature, self.memory, rows)
        return _PrecomputedGradient.apply(v, loss.detach(), grad_v)

    def nce(self, logits: torch.Tensor) -> torch.Tensor:
        """NCE loss of ``(B, 1 + K)`` logits, in log space (exact, and safe from overflow at low T)."""
        num_negatives = logits.shape[1] - 1
        log_p = logits - torch.log(self.norm_constant).to(logits.dtype)  # log P(i) = v.m_i / T - log Z
        noise = num_negatives / self.memory_size  # K * Pn
        log_denominator = torch.logaddexp(log_p, log_p.new_tensor(math.log(noise + NCE_EPS)))
        log_h_pos = log_p[:, 0] - log_denominator[:, 0]
        log_h_neg = math.log(noise) - log_denominator[:, 1:]
        return -(log_h_pos + log_h_neg.sum(dim=1)).mean()

    @torch.no_grad()
    def estimate_norm_constant(self, logits: torch.Tensor) -> None:
        """Sets ``Z = N * mean(exp(logits))`` over this batch's entries, averaged over ranks."""
        flat = logits.detach().double().flatten()
        mean_exp = torch.exp(torch.logsumexp(flat, 0) - math.log(flat.numel()))
        if comm.get_world_size() > 1:
            dist.all_reduce(mean_exp)
            mean_exp /= comm.get_world_size()
        self.norm_constant.fill_(float(mean_exp) * self.memory_size)

    @torch.no_grad()
    def update_memory(self, embedding: torch.Tensor, indices: torch.Tensor) -> None:
        """``m_y <- normalize(momentum * m_y + (1 - momentum) * v)`` for the rows of every rank's batch."""
        dtype = score_dtype(self.memory)
        v = all_gather_rows(embedding.detach().to(dtype))
        y = all_gather_rows(indices)
        # An image can appear twice in one global batch (epoch boundary). index_copy_ with repeated
        # indices keeps an unspecified one (nondeterministic on GPU), which could differ between ranks:
        # keep the last occurrence in rank order, the same on every rank.
        unique, inverse = torch.unique(y, return_inverse=True)
        if unique.numel() < y.numel():
            positions = torch.arange(y.numel(), device=y.device)
            last = torch.full_like(unique, -1).scatter_reduce(0, inverse, positions, reduce="amax")
            v, y = v[last], y[last]
        rows = self.memory.index_select(0, y).to(dtype)
        updated = F.normalize(rows * self.momentum + v * (1 - self.momentum), dim=1)
        self.memory.index_copy_(0, y, updated.to(self.memory.dtype))

    def weighted_terms(
        self,
        embeddings: torch.Tensor | Sequence[torch.Tensor],
        indices: torch.Tensor,
        negatives: Sequence[torch.Tensor] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[torch.Tensor]:
        """``loss_weights[l] * loss_l`` for each ``(B, D)`` embedding, updating the bank as configured.

        Logs ``nce_top1[_<name>]``: how often the positive scores above all K negatives (chance
        ``1 / (K + 1)``), the instance-discrimination accuracy a run can be watched by.

        Args:
            embeddings: one ``(B, D)`` tensor or a list of them (PIRL: ``[patches, images]``).
            indices: ``(B,)`` int64 bank rows (the images' data set indices).
            negatives: optional ``(B, K)`` negative indices per embedding (tests); drawn otherwise.
            names: a name per embedding for the logged accuracy (PIRL: ``["patches", "image"]``).
        """
        if isinstance(embeddings, torch.Tensor):
            embeddings = [embeddings]
        self._check_inputs(embeddings, indices, negatives)
        if not self._checked_ranks_agree:
            self._check_ranks_agree()
        terms = []
        # Scores and probabilities in the bank's precision even under autocast: exp(v.m / T) overflows fp16.
        with torch.autocast(device_type=self.memory.device.type, enabled=False):
            for l_idx, embedding in enumerate(embeddings):
                v = embedding.to(score_dtype(self.memory))
                if self.norm_embedding:
                    v = F.normalize(v, dim=1)
                neg = negatives[l_idx] if negatives is not None else self.sample_negatives(indices)
                loss = self._scored_loss(v, indices, neg, f"_{names[l_idx]}" if names else "")
                terms.append(self.loss_weights[l_idx] * loss)
                if self.update_mem_on_forward or l_idx == self.update_mem_with_emb_index:
                    self.update_memory(v, indices)
        return terms

    def forward(
        self,
        embeddings: torch.Tensor | Sequence[torch.Tensor],
        indices: torch.Tensor,
        negatives: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The total loss ``sum_l loss_weights[l] * loss_l`` (0-dim); see ``weighted_terms``."""
        return torch.stack(self.weighted_terms(embeddings, indices, negatives)).sum()

    def _check_inputs(self, embeddings, indices: torch.Tensor, negatives) -> None:
        if len(embeddings) != len(self.loss_weights):
            raise ValueError(
                f"got {len(embeddings)} embeddings but loss_weights={self.loss_weights} has "
                f"{len(self.loss_weights)} entries: give one weight per embedding"
            )
        for emb in embeddings:
            if emb.ndim != 2 or emb.shape != (indices.shape[0], self.embedding_dim):
                raise ValueError(
                    f"embeddings must be (batch={indices.shape[0]}, embedding_dim={self.embedding_dim}), "
                    f"got {tuple(emb.shape)}"
                )
        if indices.dtype != torch.long or indices.ndim != 1:
            raise ValueError(f"indices must be 1-d int64, got {indices.dtype} {tuple(indices.shape)}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.memory_size):
            raise ValueError(
                f"image indices must be in [0, {self.memory_size}) (the memory size), got "
                f"[{int(indices.min())}, {int(indices.max())}]: does the data set match num_train_samples?"
            )
        if negatives is not None and len(negatives) != len(embeddings):
            raise ValueError(f"negatives: need one (B, K) tensor per embedding, got {len(negatives)}")

    @torch.no_grad()
    def _check_ranks_agree(self) -> None:
        # Identical banks are what keeps the gathered updates consistent; a bank loaded on one rank
        # only, or different init seeds, would silently train against different negatives.
        if comm.get_world_size() > 1:
            row_sums = self.memory.sum(dim=1, dtype=torch.float64)  # no float64 copy of the whole bank
            weights = torch.arange(1, row_sums.numel() + 1, device=row_sums.device, dtype=torch.float64)
            fingerprint = torch.stack([row_sums.sum(), (row_sums * weights).sum(), self.norm_constant])
            gathered = [torch.empty_like(fingerprint) for _ in range(comm.get_world_size())]
            dist.all_gather(gathered, fingerprint)
            if any(not torch.equal(g, gathered[0]) for g in gathered):
                raise RuntimeError(
                    "the NCE memory bank differs between ranks (fingerprints "
                    f"{[g.tolist() for g in gathered]}): every rank must start from the same bank "
                    "(same memory_params.init_seed, checkpoint loaded on every rank)"
                )
        self._checked_ranks_agree = True
