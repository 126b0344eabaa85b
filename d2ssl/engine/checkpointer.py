"""detectron2's checkpointer with atomic writes: a kill during a save never corrupts the last checkpoint."""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer


class AtomicCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose ``save`` writes ``<name>.pth.tmp`` then renames it.

    ``last_checkpoint`` is rewritten the same way and only after the checkpoint file is complete,
    so it always names a whole file: the previous one if the process dies mid-save.
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        self._write_atomically(save_file, lambda f: torch.save(data, f), mode="wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        self._write_atomically(save_file, lambda f: f.write(last_filename_basename), mode="w")

    def _write_atomically(self, path: str, write, mode: str) -> None:
        tmp = path + ".tmp"
        with self.path_manager.open(tmp, mode) as f:
            write(f)
            if hasattr(f, "flush") and hasattr(f, "fileno"):
                f.flush()
                os.fsync(f.fileno())
        local_dir = self.path_manager.get_local_path(os.path.dirname(path))
        if os.path.isdir(local_dir):
            # os.replace is atomic on POSIX and overwrites; iopath's mv refuses an existing target.
            os.replace(os.path.join(local_dir, os.path.basename(tmp)), os.path.join(local_dir, os.path.basename(path)))
        else:  # remote store: no atomic rename exists, keep the tmp-then-move order at least
            if self.path_manager.exists(path):
                self.path_manager.rm(path)
            self.path_manager.mv(tmp, path)
