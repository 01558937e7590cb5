"""Self-describing checkpoint directories, written atomically.

Layout of a checkpoint directory::

    manifest.json        package/torch version, step, data fingerprint, file list
    config.json          model and training configuration
    vocabulary.json      gene symbols (and Ensembl ids) in model order
    conditions.json      condition label <-> id maps (empty for unconditional models)
    prior.json           genes each genetic perturbation strongly down-regulates, per context
    permutation.npy      the fixed random gene permutation of sequence compression
    model.pt, ema.pt     weights and their power-function EMA
    optimizer.pt         AdamW state (for --resume)
    train_log.jsonl      loss / learning rate / throughput per logged step
    validation.csv       validation-slice NLL per gene against step and training seconds
    best.pt              the EMA weights with the best validation NLL (used for sampling)
    state_prior.pt       a density over the kept weights' cell states, drawn from first when
                         generating (cell_mlp models without conditions)

Everything is written into a sibling temporary directory which then replaces the old checkpoint
with renames, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import lingshu
from lingshu.config import ModelConfig, TrainConfig, config_from_dict, config_to_dict
from lingshu.data.vocabulary import GeneVocabulary
from lingshu.model.state_prior import StatePrior
from lingshu.model.transformer import MaskPredictor

REQUIRED_FILES = ("manifest.json", "config.json", "vocabulary.json", "model.pt", "ema.pt")


@dataclass
class Checkpoint:
    """Everything a checkpoint directory holds, loaded into memory."""

    model_config: ModelConfig
    train_config: TrainConfig
    vocabulary: GeneVocabulary
    model_state: dict
    ema_state: dict
    conditions: dict = field(default_factory=dict)
    prior: dict = field(default_factory=dict)
    optimizer_state: dict | None = None
    step: int = 0
    data_fingerprint: str = ""
    log: list[dict] = field(default_factory=list)
    validation_log: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    state_prior: StatePrior | None = None

    def build_model(self, use_ema: bool = True) -> MaskPredictor:
        """A MaskPredictor with the weights used for sampling (the EMA weights that scored best
        on the validation slice, else the last EMA weights) or the last raw weights."""
        model = MaskPredictor(self.model_config)
        if use_ema:
            model.load_state_dict(self.best_state if self.best_state is not None else self.ema_state["model"])
        else:
            model.load_state_dict(self.model_state)
        return model.eval()

    @property
    def best_validation(self) -> dict | None:
        """The validation point of the kept weights (step, training seconds, NLL), or None."""
        return min(self.validation_log, key=lambda r: r["val_nll"]) if self.validation_log else None


def save_checkpoint(checkpoint: Checkpoint, directory: Path) -> None:
    """Write ``checkpoint`` to ``directory`` atomically (replacing any previous one)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        _write_json(
            tmp / "config.json",
            {
                "model": config_to_dict(checkpoint.model_config),
                "train": config_to_dict(checkpoint.train_config),
            },
        )
        _write_json(tmp / "vocabulary.json", checkpoint.vocabulary.to_dict())
        _write_json(tmp / "conditions.json", checkpoint.conditions)
        _write_json(tmp / "prior.json", checkpoint.prior)
        np.save(tmp / "permutation.npy", checkpoint.model_state["permutation"].cpu().numpy())
        torch.save(checkpoint.model_state, tmp / "model.pt")
        torch.save(checkpoint.ema_state, tmp / "ema.pt")
        if checkpoint.optimizer_state is not None:
            torch.save(checkpoint.optimizer_state, tmp / "optimizer.pt")
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in checkpoint.log))
        if checkpoint.validation_log:
            pd.DataFrame(checkpoint.validation_log).to_csv(tmp / "validation.csv", index=False)
        if checkpoint.best_state is not None:
            torch.save(checkpoint.best_state, tmp / "best.pt")
        if checkpoint.state_prior is not None:
            torch.save(checkpoint.state_prior.to_dict(), tmp / "state_prior.pt")
        _write_json(
            tmp / "manifest.json",
            {
                "format": "lingshu-checkpoint/1",
                "package_version": lingshu.__version__,
                "torch_version": torch.__version__,
                "step": checkpoint.step,
                "data_fingerprint": checkpoint.data_fingerprint,
                "n_genes": len(checkpoint.vocabulary),
                "files": sorted(p.name for p in tmp.iterdir()) + ["manifest.json"],
            },
        )
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(directory: Path, with_optimizer: bool = False) -> Checkpoint:
    """Read a checkpoint directory, with a clear error when it is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a lingshu checkpoint (missing {', '.join(missing)})")
    config = json.loads((directory / "config.json").read_text())
    manifest = json.loads((directory / "manifest.json").read_text())
    log_path = directory / "train_log.jsonl"
    conditions_path = directory / "conditions.json"
    prior_path = directory / "prior.json"
    optimizer_path = directory / "optimizer.pt"
    validation_path, best_path = directory / "validation.csv", directory / "best.pt"
    state_prior_path = directory / "state_prior.pt"
    return Checkpoint(
        model_config=config_from_dict(ModelConfig, config["model"]),
        train_config=config_from_dict(TrainConfig, config["train"]),
        vocabulary=GeneVocabulary.from_dict(json.loads((directory / "vocabulary.json").read_text())),
        model_state=torch.load(directory / "model.pt", map_location="cpu", weights_only=True),
        ema_state=torch.load(directory / "ema.pt", map_location="cpu", weights_only=True),
        conditions=json.loads(conditions_path.read_text()) if conditions_path.is_file() else {},
        prior=json.loads(prior_path.read_text()) if prior_path.is_file() else {},
        optimizer_state=(
            torch.load(optimizer_path, map_location="cpu", weights_only=True)
            if with_optimizer and optimizer_path.is_file()
            else None
        ),
        step=int(manifest["step"]),
        data_fingerprint=manifest.get("data_fingerprint", ""),
        log=[json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else [],
        validation_log=(pd.read_csv(validation_path).to_dict("records") if validation_path.is_file() else []),
        best_state=torch.load(best_path, map_location="cpu", weights_only=True)
        if best_path.is_file()
        else None,
        state_prior=StatePrior.from_dict(torch.load(state_prior_path, map_location="cpu", weights_only=True))
        if state_prior_path.is_file()
        else None,
    )


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")
