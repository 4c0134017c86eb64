"""Run directories: ``runs/<algo>-<dataset>-<utc time>-s<seed>/`` (ARCHITECTURE.md, Contracts).

    config.yaml          fully resolved config (+ algo, dataset, seed, device, versions)
    metrics.jsonl        one JSON object per logged step ("step" and "phase" keys always present)
    tb/                  TensorBoard event files
    checkpoints/latest.pt, best.pt   written to a temp file then renamed (never half-written)
    eval.json            final evaluation (its presence marks a finished run)
    .lock                pid + host of the process writing the run (removed when it stops)

Resuming (``--resume RUN_DIR``) reloads ``checkpoints/latest.pt``, which carries the RNG
states, and truncates metrics.jsonl back to the checkpoint's step (TensorBoard is rewritten
from what is kept) so the continued run's metrics equal an uninterrupted run's.

Checkpoints are plain data (tensors, numbers, strings, lists, dicts; RNG states included) and
are read with PyTorch's restricted unpickler (offmarl/safeload.py): a file that would need
anything else is refused with one line, never unpickled. docs/run-directories.md has the rest.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from offmarl.atomic import atomic_torch_save, atomic_write_text
from offmarl.data.storage import _pid_alive  # one liveness test for stale temp files and stale locks
from offmarl.errors import OffmarlError
from offmarl.safeload import torch_load_plain

CHECKPOINT_FORMAT = "offmarl-checkpoint"
# 2: RNG states as tensors and plain numbers (format 1 pickled numpy objects and needed the
# unrestricted unpickler, which can run code)
CHECKPOINT_VERSION = 2


class RunError(OffmarlError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state as plain data (tensors, ints, floats, tuples): loadable with weights_only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of 625 ints, gauss_next): plain already
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, g in (generators or {}).items():
        state[f"gen:{name}"] = g.get_state()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(tuple(state["python"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
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
    """A run directory: config, metrics (jsonl + TensorBoard), checkpoints, eval.json, lock."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self._tb = None
        self._metrics_f = None
        self._locked = False

    # ----------------------------------------------------------------- create / open
    @classmethod
    def create(cls, root: Path, algo: str, dataset: str, seed: int, config: dict[str, Any]) -> RunDir:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        safe = Path(dataset).stem if ("/" in dataset or dataset.endswith((".hdf5", ".h5"))) else dataset
        root = Path(root)
        check_runs_folder(root)
        path = root / f"{algo}-{safe}-{stamp}-s{seed}"
        n = 1
        while path.exists():
            n += 1
            path = root / f"{algo}-{safe}-{stamp}-s{seed}-{n}"
        try:
            path.mkdir(parents=True)
            (path / "checkpoints").mkdir()
        except OSError as e:
            raise RunError(f"--out {root}: cannot create the run directory {path} ({e.strerror or e}); "
                           "give a writable folder") from None
        run = cls(path)
        atomic_write_text(path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        path = Path(path)
        if not (path / "config.yaml").is_file():
            raise RunError(f"{path} is not a run directory (no config.yaml); give the folder that `offmarl "
                           "train` created")
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        f = self.path / "config.yaml"
        try:
            data = yaml.safe_load(f.read_text())
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise RunError(f"{f}: not valid YAML{at}; the run's config is damaged (restore it from a copy)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise RunError(f"{f}: cannot be read ({e}); restore it from a copy") from None
        missing = [k for k in ("algo", "dataset", "seed", "config") if not isinstance(data, dict) or k not in data]
        if missing:
            raise RunError(f"{f}: key {missing[0]!r} is missing; the run's config is damaged or not offmarl's "
                           "(restore it from a copy)")
        return data

    # ----------------------------------------------------------------- lock
    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def lock(self) -> None:
        """Keep other processes out while this one writes the run. A lock left by a process that
        is gone (killed, machine rebooted) on this host is taken over."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": round(time.time(), 3)}
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_holder()
                pid = holder.get("pid") if holder is not None else None
                gone = not isinstance(pid, int) or pid <= 0 or not _pid_alive(pid)
                if holder is None or (holder.get("host") == me["host"] and gone):
                    self.lock_path.unlink(missing_ok=True)  # stale (or torn) lock: take it over
                    continue
                if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                    self._locked = True
                    return
                raise RunError(
                    f"{self.path} is in use by process {holder.get('pid')} on {holder.get('host')} (lock file "
                    f"{self.lock_path}); wait for it to finish, or delete the lock file if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(me))
            self._locked = True
            return
        raise RunError(f"{self.lock_path}: could not take the lock (another process keeps re-creating it)")

    def _lock_holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_path.read_text())
            return holder if isinstance(holder, dict) and "pid" in holder else None
        except (OSError, ValueError):
            return None

    def unlock(self) -> None:
        if self._locked:
            holder = self._lock_holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.lock_path.unlink(missing_ok=True)
            self._locked = False

    # ----------------------------------------------------------------- status
    @property
    def finished(self) -> bool:
        """True once the final evaluation was written (eval.json)."""
        return (self.path / "eval.json").is_file()

    def final_step(self) -> int | None:
        """The step of the final evaluation of a finished run (None if unfinished or unknown)."""
        if not self.finished:
            return None
        rows = self.metrics("final_eval")
        return int(rows[-1]["step"]) if rows else None

    # ----------------------------------------------------------------- metrics
    def log(self, step: int, phase: str, metrics: dict[str, Any]) -> None:
        """Append one row to metrics.jsonl (strict JSON: a non-finite number is written as null
        and its key listed under "nonfinite" with "nan", "inf" or "-inf") and to TensorBoard."""
        row: dict[str, Any] = {"step": int(step), "phase": phase, "time": round(time.time(), 3)}
        nonfinite: dict[str, str] = {}
        for k, v in metrics.items():
            v = _jsonable(v)
            if isinstance(v, float) and not math.isfinite(v):
                nonfinite[k] = str(v)
                v = None
            row[k] = _strict(v)
        if nonfinite:
            row["nonfinite"] = nonfinite
        if self._metrics_f is None:
            self._drop_torn_tail()
            self._metrics_f = open(self.path / "metrics.jsonl", "a")
        self._metrics_f.write(json.dumps(row, allow_nan=False) + "\n")
        self._metrics_f.flush()
        self._log_tensorboard(step, phase, metrics)

    def _log_tensorboard(self, step: int, phase: str, metrics: dict[str, Any]) -> None:
        tb = self._tensorboard()
        if tb is None:
            return
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                tb.add_scalar(f"{phase}/{k}", v, step)

    def metrics(self, phase: str | None = None) -> list[dict[str, Any]]:
        rows = self._read_rows()
        return [r for r in rows if phase is None or r["phase"] == phase]

    def _read_rows(self) -> list[dict[str, Any]]:
        """Every row of metrics.jsonl. A torn LAST line (what a crash mid-write leaves) is skipped;
        a damaged line elsewhere is an error naming the line."""
        f = self.path / "metrics.jsonl"
        if not f.exists():
            return []
        lines = f.read_text().splitlines()
        rows = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "step" not in row or "phase" not in row:
                    raise ValueError("not a metrics row")
            except ValueError:
                if i == len(lines) - 1:
                    continue  # the torn last row of an interrupted write
                raise RunError(f"{f}: line {i + 1} is not a metrics row (JSON with step and phase); "
                               "the file is damaged — delete that line to continue") from None
            rows.append(row)
        return rows

    def _drop_torn_tail(self) -> None:
        """Cut a last line that has no newline (a write killed half-way) before appending."""
        f = self.path / "metrics.jsonl"
        if not f.exists():
            return
        data = f.read_bytes()
        if data and not data.endswith(b"\n"):
            atomic_write_text(f, data[: data.rfind(b"\n") + 1].decode())

    def truncate_metrics(self, step: int, drop_at_step: bool = False) -> None:
        """Drop metric rows logged after ``step`` (they belong to work the checkpoint lost), the
        rows AT ``step`` too when ``drop_at_step``, and any final evaluation (the continued run
        writes its own). TensorBoard is rewritten from the rows kept."""
        f = self.path / "metrics.jsonl"
        if self._metrics_f is not None:
            self._metrics_f.close()
            self._metrics_f = None
        limit = step - 1 if drop_at_step else step
        keep = [r for r in self._read_rows() if r["step"] <= limit and r["phase"] != "final_eval"]
        if f.exists():
            atomic_write_text(f, "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep))
        self.rewrite_tensorboard(keep)

    def rewind(self, step: int, drop_at_step: bool = False) -> None:
        """Make the run what it was at checkpoint ``step`` before training continues from there:
        metrics and TensorBoard cut back (``truncate_metrics``), and no longer finished."""
        self.truncate_metrics(step, drop_at_step)
        (self.path / "eval.json").unlink(missing_ok=True)

    def rewrite_tensorboard(self, rows: list[dict[str, Any]]) -> None:
        """Replace tb/ with exactly ``rows`` (event files cannot be cut, so they are rewritten)."""

        tb_dir = self.path / "tb"
        if self._tb:
            self._tb.close()
        self._tb = None
        if not tb_dir.exists():
            return
        shutil.rmtree(tb_dir)
        skip = {"step", "phase", "time", "nonfinite"}
        for r in rows:
            self._log_tensorboard(r["step"], r["phase"], {k: v for k, v in r.items() if k not in skip})
        if self._tb:
            self._tb.flush()

    def _tensorboard(self):
        if self._tb is None:
            try:
                # lazy: tensorboard costs ~1 s to import and only runs that log need it
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tb"))
            except Exception:  # tensorboard missing or broken: jsonl still has everything
                self._tb = False
        return self._tb or None

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, state: dict[str, Any], name: str = "latest") -> Path:
        path = self.ckpt_dir / f"{name}.pt"
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}, path)
        return path

    def load_checkpoint(self, name: str = "latest", map_location="cpu") -> dict[str, Any]:
        """Load ``checkpoints/<name>.pt`` as plain data (never unpickling code); a RunError names
        the file for a missing, unsafe, old-format, truncated or foreign file."""
        path = self.ckpt_dir / f"{name}.pt"
        if not path.exists():
            raise RunError(f"{path} does not exist: the run has no '{name}' checkpoint yet")
        fix = "the run cannot continue from it (train again, or restore the file from a copy)"
        try:
            ckpt = torch_load_plain(path, "checkpoint", map_location=map_location, fix=fix)
        except OffmarlError as e:
            raise RunError(str(e)) from None
        if not isinstance(ckpt, dict) or "algo" not in ckpt:
            raise RunError(f"{path}: not an offmarl checkpoint (no 'algo' entry); {fix}")
        version = ckpt.get("format_version", 1)
        if version > CHECKPOINT_VERSION:
            raise RunError(f"{path}: checkpoint format {version} is newer than this offmarl reads "
                           f"({CHECKPOINT_VERSION}); upgrade offmarl")
        return ckpt

    def has_checkpoint(self, name: str = "latest") -> bool:
        return (self.ckpt_dir / f"{name}.pt").exists()

    def write_eval(self, result: dict[str, Any]) -> Path:
        path = self.path / "eval.json"
        atomic_write_text(path, json.dumps(_strict(_jsonable(result)), indent=2, allow_nan=False))
        return path

    def close(self) -> None:
        if self._metrics_f is not None:
            self._metrics_f.close()
            self._metrics_f = None
        if self._tb:
            self._tb.close()
            self._tb = None
        self.unlock()


# ---------------------------------------------------------------------- provenance
def dataset_provenance(ds, location: str | os.PathLike | None) -> dict[str, Any]:
    """What config.yaml records about the training data: where it was read from (absolute path),
    its content checksum and size (checked on resume), and its metadata (all that evaluation needs:
    env, scheme, agent layout, reference returns; ``offmarl evaluate`` never loads the data)."""
    return {"dataset_path": None if location is None else str(Path(location).expanduser().resolve()),
            "dataset_checksum": ds.checksum(), "dataset_transitions": len(ds), "dataset_meta": ds.meta.to_dict()}


def check_dataset_provenance(run: RunDir, saved: dict[str, Any], ds) -> None:
    """The data a run resumes on must be the data it started on (same size, same checksum)."""
    where = saved.get("dataset_path") or saved.get("dataset")
    fix = ("resume needs the data the run started on: restore that file, or start a new run "
           "(`offmarl train --dataset ...`) on the new data")
    want_n, have_n = saved.get("dataset_transitions"), len(ds)
    if want_n is not None and int(want_n) != have_n:
        raise RunError(f"{run.path}: the dataset changed since the run started: {where} now holds {have_n:,} "
                       f"transitions, the run was trained on {int(want_n):,}; {fix}")
    want, have = saved.get("dataset_checksum"), ds.checksum()
    if want is not None and want != have:
        raise RunError(f"{run.path}: the dataset changed since the run started: {where} has checksum {have}, "
                       f"the run recorded {want}; {fix}")


def check_runs_folder(root: Path) -> None:
    """--out must be (or become) a folder: name the file in the way instead of a traceback."""
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                raise RunError(f"--out {root}: {p} is a file, not a folder; give a folder for the run directories")
            if not os.access(p, os.W_OK | os.X_OK):
                raise RunError(f"--out {root}: {p} is not writable; give a writable folder")
            return


def _strict(v):
    """JSON-safe in the strict sense: non-finite floats (also inside lists) become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _strict(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_strict(x) for x in v]
    return v


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
