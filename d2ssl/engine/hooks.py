"""Training hooks that make a d2ssl run resumable exactly."""

from __future__ import annotations

import random

import numpy as np
import torch
from detectron2.engine import HookBase


class ResumeDataOrder(HookBase):
    """Before training starts (at iteration 0 or after a resume), moves the loader's
    ``ResumableTrainingSampler`` to the trainer's start iteration, so the resumed run sees the
    samples and augmentations an uninterrupted run would."""

    def __init__(self, sampler):
        self.sampler = sampler

    def before_train(self) -> None:
        self.sampler.set_start_iter(self.trainer.iter)


class RandomStateCheckpoint(HookBase):
    """Stores the training process's python/numpy/torch random states in every checkpoint (the
    trainer saves the ``state_dict`` of its hooks) and restores them on resume, so random choices
    made inside the model (e.g. NCE negatives) continue identically."""

    def state_dict(self) -> dict:
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
