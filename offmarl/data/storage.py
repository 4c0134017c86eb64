"""Native dataset storage: ONE HDF5 file per dataset, written atomically.

Layout (format "offmarl-dataset", version 1; docs/datasets.md "Format" has the full table):

    /states, /next_states                   [T, S]     float32
    /observations, /next_observations       [T, N, O]  float32 (zero-padded)
    /actions                                [T, N, A]  float32 | [T, N] int64 (discrete)
    /avail_actions, /next_avail_actions     [T, N, K]  bool (discrete envs, optional)
    /rewards                                [T]        float32
    /terminals, /timeouts                   [T]        bool
    attrs: format = "offmarl-dataset", format_version = 1, meta = DatasetMeta as JSON
    each array's attr crc32 = CRC-32 of its bytes (verified on load: bit rot and edits are caught;
    files written before the attr existed load unverified)

Arrays are stored uncompressed and contiguous, so h5py reads each one straight into a numpy
array. Measured here (docs/datasets.md): a 1M-transition ant-4x2 fo dataset (1.12 GB) loads in
0.6-0.8 s warm, 1.2-2.9 s in a fresh process on a loaded 2-core CPU; lzf (0.49 GB: it only
shrinks the fo observation copies) took 3.2-5.0 s, over the 3 s budget.

Writes go to a hidden temp file in the destination directory and are moved into place with
``os.replace`` (atomic on POSIX), so a reader never sees a half-written file and a writer
killed mid-write leaves the old file (or nothing) at the destination.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from offmarl.atomic import TMP_SUFFIX, atomic_path
from offmarl.data.dataset import ARRAY_KEYS, OPTIONAL_KEYS, DatasetError, DatasetMeta, MultiAgentDataset
from offmarl.errors import OffmarlError

FORMAT_NAME = "offmarl-dataset"
FORMAT_VERSION = 1

# Key sets that identify files written by other tools (for the "use convert" hint).
D4RL_KEYS = ("observations", "actions", "rewards", "terminals")


# ---------------------------------------------------------------------------- writing
def save_dataset(ds: MultiAgentDataset, path: str | os.PathLike, compression: str | None = None) -> Path:
    """Write ``ds`` to ``path`` (one HDF5 file) atomically and return the path.

    ``compression``: None (default; fastest to load) or an h5py filter name ("lzf", "gzip").
    On any exception the temp file is removed and the destination is left as it was.
    """
    import h5py

    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory; give a file name such as {path / 'dataset.h5'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    # The pid in the temp's name lets a later save recognise temps of killed writers; mode "x" creates
    # the file exclusively with the usual umask permissions (mkstemp would make it 0600). fsync: flushed
    # before the rename, so a crash cannot publish an empty file.
    with atomic_path(path, fsync=True) as tmp, h5py.File(tmp, "x") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["meta"] = json.dumps(ds.meta.to_dict())
        for key in ARRAY_KEYS + OPTIONAL_KEYS:
            arr = getattr(ds, key)
            if arr is None:
                continue
            arr = np.ascontiguousarray(arr)
            kw: dict[str, Any] = {}
            if compression is not None:
                kw = {"compression": compression, "chunks": _chunks(arr.shape)}
            f.create_dataset(key, data=arr, **kw).attrs["crc32"] = _crc32(arr)
    return path


def check_output_path(path: str | os.PathLike, force: bool = False, option: str = "--out") -> Path:
    """Refuse an output path BEFORE any work: a folder, a path under a regular file, an
    unwritable folder, or an existing file without ``force`` (``--force``)."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{option} {path}: is a directory; give a file name such as {path / 'dataset.hdf5'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DatasetError(f"{option} {path}: {parent} is a file, not a folder; pick another output path")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise DatasetError(f"{option} {path}: the folder {parent} is not writable; pick another output path")
            break
    if path.exists() and not force:
        raise DatasetError(f"{option} {path}: the file exists; pass --force to replace it, or pick another path")
    return path


def _crc32(arr: np.ndarray) -> int:
    """CRC-32 of the array's bytes: zlib's runs at memory speed without copying (sha256 would add
    about 7 s to loading a 1M-transition ant file on the 2 shared cores here)."""
    arr = np.ascontiguousarray(arr)
    return zlib.crc32(memoryview(arr).cast("B")) if arr.size else 0


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """About 1 MiB per chunk along the transition axis (only used with compression)."""
    row = int(np.prod(shape[1:])) * 4 if len(shape) > 1 else 4
    rows = max(1, min(shape[0], (1 << 20) // max(row, 1)))
    return (rows,) + tuple(shape[1:])


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files left by writers of ``path`` that were killed (their pid is gone)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\..*{re.escape(TMP_SUFFIX)}$")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                (path.parent / name).unlink()
            except OSError:
                pass


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# ---------------------------------------------------------------------------- reading
def open_hdf5(path: str | os.PathLike, what: str = "dataset"):
    """Open an HDF5 file read-only with a DatasetError (file name + fix) for missing, non-HDF5
    and truncated/corrupt files. Shared by the D4RL reader."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"{path}: file not found. Check the path, or run `offmarl datasets list` to see named datasets"
        )
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected an HDF5 {what} file (.h5/.hdf5)")
    if not h5py.is_hdf5(path):
        raise DatasetError(
            f"{path}: not an HDF5 file (no HDF5 signature). Expected an offmarl {what} file "
            "written by `offmarl datasets generate/convert`; was it saved in another format?"
        )
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(
            f"{path}: the HDF5 file is truncated or corrupt ({_first_line(e)}). "
            "Re-create it (`offmarl datasets generate/convert`) or copy it again"
        ) from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read(f, key: str, path: Path) -> np.ndarray:
    import h5py

    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(
            f"{path}: key '{key}' is {'missing' if obj is None else 'not an array'}; "
            "the file is incomplete — re-create it with `offmarl datasets generate/convert`"
        )
    try:
        arr = obj[()]
    except (OSError, RuntimeError) as e:
        raise DatasetError(
            f"{path}: key '{key}' cannot be read, the file is truncated or corrupt ({_first_line(e)}). "
            "Re-create it or copy it again"
        ) from None
    stored = obj.attrs.get("crc32")
    if stored is not None and isinstance(arr, np.ndarray) and int(stored) != _crc32(arr):
        raise DatasetError(
            f"{path}: key '{key}' does not match its stored checksum (crc32): the file was damaged (bit rot, a bad "
            "copy) or edited after it was written. Copy it again or re-create it with `offmarl datasets "
            "generate/convert`"
        )
    return arr


def load_dataset_file(path: str | os.PathLike, env: str | None = None) -> MultiAgentDataset:
    """Load a native offmarl HDF5 file. Every problem is a DatasetError naming the file, the key
    and what to do; array checks (shapes, NaN/inf, empty) are MultiAgentDataset.validate's, and
    the metadata is checked against the environment it names (check_against_env).

    ``env``: the environment the caller expects (``--env``); a file holding another is an error
    (the same rule in ``convert``, ``info`` and ``train``)."""
    path = Path(path)
    with open_hdf5(path) as f:
        try:
            meta, arrays = _read_native(f, path)
        except (OSError, RuntimeError) as e:  # damaged object headers or attribute heaps
            raise DatasetError(
                f"{path}: the HDF5 file is truncated or corrupt ({_first_line(e)}). Re-create it or copy it again"
            ) from None
    rewards = arrays["rewards"]
    t = len(rewards) if rewards.ndim else 0
    for k, v in arrays.items():
        if v is not None and (v.ndim == 0 or len(v) != t):
            rows = "a scalar" if v.ndim == 0 else f"{len(v)} rows"
            raise DatasetError(
                f"{path}: key '{k}' has {rows} but 'rewards' has {t}; every array needs one row per "
                "transition. The file is inconsistent — re-create it with `offmarl datasets generate/convert`"
            )
    if env is not None and env != meta.env:
        raise DatasetError(f"{path}: holds env {meta.env!r}, not {env!r} (--env); a native file knows its "
                           "env: drop --env")
    try:
        ds = MultiAgentDataset(**arrays, meta=meta, origin=str(path))
        check_against_env(ds)
    except DatasetError as e:  # validate() names file + key; add what to do about a bad file
        raise DatasetError(f"{e}. Re-create the file with `offmarl datasets generate/convert`") from None
    return ds


# environments cheap enough to build at load time (SMAX maps take ~20 s to build: their
# datasets are checked when training builds the env)
_SPEC_CHECKED = ("coordination",)


def check_against_env(ds: MultiAgentDataset) -> None:
    """The metadata must describe the environment it names (agents, widths, action kind) and
    continuous actions must lie in that environment's box: otherwise a file loads, trains for
    hours and fails at the first evaluation."""
    from offmarl.envs import MAMUJOCO_NAMES, make_env

    m, where = ds.meta, ds.origin
    if m.env not in MAMUJOCO_NAMES + _SPEC_CHECKED:
        return
    try:
        env = make_env(m.env, obs=m.obs_scheme)
    except OffmarlError as e:
        raise DatasetError(f"{where}: attr 'meta' names env {m.env!r} with obs scheme {m.obs_scheme!r}: {e}") from None
    spec = env.spec
    env.close()
    for field in ("n_agents", "obs_dims", "action_dims", "state_dim", "discrete"):
        have, want = getattr(m, field), getattr(spec, field)
        if (tuple(have) if isinstance(have, (list, tuple)) else have) != want:
            raise DatasetError(
                f"{where}: attr 'meta' says {field} = {have}, but env {m.env!r} ({m.obs_scheme}) has {want}; "
                "the metadata does not describe this data's environment")
    if not m.discrete:
        with np.errstate(invalid="ignore"):
            lo, hi = float(ds.actions.min()), float(ds.actions.max())
        # a float32 round trip of a clipped action stays inside the box; anything beyond a
        # rounding error was never executable in this env
        tol = 1e-5 * max(1.0, abs(spec.action_high), abs(spec.action_low))
        if lo < spec.action_low - tol or hi > spec.action_high + tol:
            raise DatasetError(
                f"{where}: key 'actions' spans [{lo:.6g}, {hi:.6g}], outside env {m.env!r}'s action box "
                f"[{spec.action_low}, {spec.action_high}]; clip the actions to the box (what the env executes)")


def _read_native(f, path: Path) -> tuple[DatasetMeta, dict[str, np.ndarray | None]]:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT_NAME:
        raise DatasetError(_not_offmarl_message(path, f, fmt))
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise DatasetError(
            f"{path}: attr 'format_version' is {version}, this offmarl reads up to {FORMAT_VERSION}; upgrade offmarl"
        )
    try:
        meta = DatasetMeta.from_dict(json.loads(f.attrs.get("meta")))
    except (TypeError, ValueError, KeyError) as e:
        raise DatasetError(
            f"{path}: attr 'meta' is missing or not valid dataset metadata JSON ({_first_line(e)}); "
            "re-create the file with `offmarl datasets generate/convert`"
        ) from None
    arrays: dict[str, np.ndarray | None] = {k: _read(f, k, path) for k in ARRAY_KEYS}
    for k in OPTIONAL_KEYS:
        arrays[k] = _read(f, k, path) if k in f else None
    return meta, arrays


def _not_offmarl_message(path: Path, f, fmt) -> str:
    keys = set(f.keys())
    if fmt is not None:
        return f"{path}: attr 'format' is {fmt!r}, not {FORMAT_NAME!r}; this is not an offmarl dataset file"
    if all(k in keys for k in D4RL_KEYS):
        return (
            f"{path}: no 'format' attr — not an offmarl dataset file; it has the D4RL keys "
            f"({', '.join(D4RL_KEYS)}), so it looks like a D4RL file? Use "
            f"`offmarl datasets convert {path} --from d4rl --env ant-4x2 --obs fo --out FILE`"
        )
    if any(k.startswith("episode_") for k in keys):
        return (
            f"{path}: no 'format' attr — not an offmarl dataset file; its episode_<i> groups look like "
            f"a Minari main_data.hdf5. Use `offmarl datasets convert {path.parent.parent} --from minari "
            "--env ant-4x2 --obs fo --out FILE`"
        )
    shown = ", ".join(sorted(keys)[:8]) or "none"
    return (
        f"{path}: no 'format' attr — not an offmarl dataset file (top-level keys: {shown}). "
        "Create one with `offmarl datasets generate` or `offmarl datasets convert --from d4rl|minari`"
    )
