"""A training process for tests/training/test_distributed.py that records who saves checkpoints.

It lives in its own module (put on sys.path by the test) because spawned processes must import
the function they run, and pytest's importlib mode gives test modules no importable name.
"""

from __future__ import annotations

from pathlib import Path

import lingshu.training.run as run
from lingshu.training import distributed


def train_recording_saves(saves: Path, adata, out_dir: Path, options: dict) -> None:
    """``run.train`` in this process, appending this process's rank to ``saves`` at every save."""
    save = run.save_checkpoint

    def recording_save(checkpoint, directory):
        with open(saves, "a") as file:
            file.write(f"{distributed.rank()}\n")
        save(checkpoint, directory)

    run.save_checkpoint = recording_save
    run.train(adata, out_dir, **options)
