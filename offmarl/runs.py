"""Run directories: ``runs/<algo>-<dataset>-<utc time>-s<seed>/`` (ARCHITECTURE.md, Contracts).

    config.yaml          fully resolved config (+ algo, dataset, seed, device, versions)
    metrics.jsonl        one JSON object per logged step ("step" and "phase" keys always present)
    tb/                  TensorBoard event files
    checkpoints/latest.pt, best.pt   written to a temp file then renamed (never half-written)
    eval.json            final evaluation

Resuming (``--resume RUN_DIR``) reloads ``checkpoints/latest.pt``, which carries the RNG
states, and truncates metrics.jsonl back to the checkpoint's step so the continued run's
metrics equal an uninterrupted run's.
"""
from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from offmarl.atomic import atomic_torch_save, atomic_write_text
from offmarl.errors import OffmarlError


class RunError(OffmarlError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, g in (generators or {}).items():
        state[f"gen:{name}"] = g.get_state()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if f"gen:{name}" in state:
            g.set_state(state[f"gen:{name}"])


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise RunError(f"--device {device!r} is not a valid device (auto, cpu, cuda, cuda:1)") from None


class RunDir:
    """A run directory: config, metrics (jsonl + TensorBoard), checkpoints, eval.json."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self._tb = None
        self._metrics_f = None

    # ----------------------------------------------------------------- create / open
    @classmethod
    def create(cls, root: Path, algo: str, dataset: str, seed: int, config: dict[str, Any]) -> "RunDir":
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        safe = Path(dataset).stem if ("/" in dataset or dataset.endswith(".hdf5")) else dataset
        path = Path(root) / f"{algo}-{safe}-{stamp}-s{seed}"
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / f"{algo}-{safe}-{stamp}-s{seed}-{n}"
        path.mkdir(parents=True)
        (path / "checkpoints").mkdir()
        run = cls(path)
        atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        return run

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.yaml").exists():
            raise RunError(f"{path} is not a run directory (no config.yaml); give the folder that `offmarl train` created")
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    # ----------------------------------------------------------------- metrics
    def log(self, step: int, phase: str, metrics: dict[str, Any]) -> None:
        row = {"step": int(step), "phase": phase, "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        if self._metrics_f is None:
            self._metrics_f = open(self.path / "metrics.jsonl", "a")
        self._metrics_f.write(json.dumps(row) + "\n")
        self._metrics_f.flush()
        tb = self._tensorboard()
        if tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(f"{phase}/{k}", v, step)

    def metrics(self, phase: str | None = None) -> list[dict[str, Any]]:
        f = self.path / "metrics.jsonl"
        if not f.exists():
            return []
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return [r for r in rows if phase is None or r["phase"] == phase]

    def truncate_metrics(self, step: int, drop_at_step: bool = False) -> None:
        """Drop metric rows logged after ``step`` (they belong to work the checkpoint lost), and
        the rows AT ``step`` too when ``drop_at_step``."""
        f = self.path / "metrics.jsonl"
        if not f.exists():
            return
        limit = step - 1 if drop_at_step else step
        keep = [line for line in f.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= limit]
        atomic_write_text(f, "".join(line + "\n" for line in keep))

    def _tensorboard(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tb"))
            except Exception:  # tensorboard missing or broken: jsonl still has everything
                self._tb = False
        return self._tb or None

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any], name: str = "latest") -> Path:
        path = self.ckpt_dir / f"{name}.pt"
        atomic_torch_save(state, path)
        return path

    def load_checkpoint(self, name: str = "latest", map_location="cpu") -> dict[str, Any]:
        path = self.ckpt_dir / f"{name}.pt"
        if not path.exists():
            raise RunError(f"{path} does not exist: the run has no '{name}' checkpoint yet")
        return torch.load(path, map_location=map_location, weights_only=False)

    def has_checkpoint(self, name: str = "latest") -> bool:
        return (self.ckpt_dir / f"{name}.pt").exists()

    def write_eval(self, result: dict[str, Any]) -> Path:
        path = self.path / "eval.json"
        atomic_write_text(path, json.dumps(_jsonable(result), indent=2))
        return path

    def close(self) -> None:
        if self._metrics_f is not None:
            self._metrics_f.close()
            self._metrics_f = None
        if self._tb:
            self._tb.close()
            self._tb = None


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v
