"""Multi-seed sweeps on Ray: ``offmarl sweep --algo ... --dataset ... --obs ... --seeds 0-4 --out S``.

Every trial (algorithm x dataset x obs x seed) is one ``offmarl train`` run in its own folder

    S/trials/<algo>__<dataset>__<obs>__s<seed>/
        <run directory>/          exactly one, the ordinary format (config.yaml, metrics.jsonl, eval.json, ...)
        stdout.log, stderr.log    the trial's output (appended across attempts)

and runs as a SUBPROCESS (``python -m offmarl.cli.main train ... --out <trial folder>``) inside a
plain Ray task. Why Ray tasks and not Ray Tune: a trial is a fixed command, not a search — Tune's
trainable API, result reporting and checkpoint syncing would wrap the run directory that
``offmarl train`` already writes and resumes; core ``ray`` (no [tune]/[default] extras) keeps the
install small and CI fast. Why a subprocess: trials stay isolated (torch threads, jax, signal
handlers, memory), and the sweep depends on nothing but the CLI.

Re-running a sweep: a trial whose run directory has eval.json is skipped; one with a checkpoint
but no eval.json continues with ``offmarl train --resume``; one without a checkpoint starts again
(its half-made run directory is removed). A failed trial is reported with the end of its stderr
and does not stop the others.

World-model cache: MOMA-PPO trials on the same dataset, seed and world-model settings share one
cached model (offmarl/worldmodel; the model's seed follows the run's, and the key ignores the
observation scheme, so e.g. the fo and po trials of a seed share it). To keep two trials from
fitting and writing the same model at once, the sweep takes a file lock per (dataset, seed,
world-model settings) (offmarl/filelock.py, ``S/locks/``): the first such trial holds it
until its log says the world model is ready ("fitted/loaded world model"), then leaves a marker;
the others wait for the lock, see the marker and load the cached model. On a cluster
(``--address``) the lock works when S is on a filesystem all nodes share.

Ray's own files: a local Ray keeps its session folder (logs, sockets, spilled objects) and its
authentication token in ``ray_dir()`` = $OFFMARL_CACHE_DIR/ray, else $OFFMARL_DATA_DIR/cache/ray,
else ~/.offmarl/cache/ray, instead of /tmp/ray and ~/.ray/auth_token. RAY_TMPDIR, RAY_AUTH_TOKEN or
RAY_AUTH_TOKEN_PATH set by the user win. Ray's object store still uses shared memory (/dev/shm).
Joining a cluster (``--address``) leaves Ray's settings alone.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from offmarl.errors import OffmarlError
from offmarl.filelock import FileLock
from offmarl.paths import cache_dir

WORLD_MODEL_ALGOS = ("moma-ppo",)          # algorithms that fit (and cache) a world model
WORLD_MODEL_READY = ("fitted world model", "loaded world model")  # moma_ppo.py's log line once it has one
STDERR_TAIL = 15                           # lines of a failed trial's stderr shown in the report


class SweepError(OffmarlError):
    pass


def parse_seeds(spec: str | list[str]) -> list[int]:
    """"0-4" -> [0, 1, 2, 3, 4]; "0,3,7" or ["0", "3"] -> listed seeds; ranges and lists mix."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    seeds: list[int] = []
    for part in (p for s in parts for p in str(s).replace(",", " ").split()):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                seeds += list(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise SweepError(f"--seeds {part!r}: use a range like 0-4 or a list like 0,3,7") from None
    if not seeds:
        raise SweepError("--seeds is empty; e.g. --seeds 0-4")
    return list(dict.fromkeys(seeds))


@dataclass(frozen=True)
class Trial:
    algo: str
    dataset: str
    obs: str | None   # None: the dataset's own scheme
    seed: int

    @property
    def name(self) -> str:
        return f"{self.algo}__{Path(self.dataset).stem}__{self.obs or 'default'}__s{self.seed}"


def plan(algos: list[str], datasets: list[str], obs: list[str] | None, seeds: list[int]) -> list[Trial]:
    """Every combination, seeds OUTERMOST: seed 0 of every cell runs first, so a sweep stopped early
    still has every cell of the table (with fewer seeds), and the first MOMA-PPO trial of each
    dataset fits the shared world model before the other seeds need it."""
    return [Trial(a, d, o, s) for s in seeds for d in datasets for o in (obs or [None]) for a in algos]


@dataclass
class TrialState:
    trial: Trial
    folder: Path
    status: str = "pending"      # pending | skipped (done earlier) | running | done | failed
    run_dir: Path | None = None
    score: float | None = None   # latest evaluation (final when done)
    step: int | None = None
    error: str = ""
    action: str = "new"          # new | resume | done


def run_dirs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/config.yaml")) if folder.exists() else []


def inspect_trial(trial: Trial, out: Path) -> TrialState:
    """What a re-run must do with this trial's folder: done, resume, or new."""
    folder = out / "trials" / trial.name
    st = TrialState(trial, folder)
    dirs = run_dirs(folder)
    if len(dirs) > 1:
        st.status, st.action = "failed", "done"
        st.error = f"{folder} holds {len(dirs)} run directories; keep one (or delete the folder to start again)"
        return st
    if dirs:
        st.run_dir = dirs[0]
        if (st.run_dir / "eval.json").exists():
            st.status, st.action = "skipped", "done"
        elif (st.run_dir / "checkpoints" / "latest.pt").exists():
            st.action = "resume"
    refresh(st)
    return st


def refresh(st: TrialState) -> None:
    """Latest score and step from the trial's run directory (eval.json, else metrics.jsonl)."""
    if st.run_dir is None:
        dirs = run_dirs(st.folder)
        st.run_dir = dirs[0] if len(dirs) == 1 else None
    if st.run_dir is None:
        return
    ev = _json_or_none(st.run_dir / "eval.json")
    if ev:
        st.score = ev.get("normalised_mean", ev.get("return_mean"))
    metrics = st.run_dir / "metrics.jsonl"
    rows = [_json_or_none(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    rows = [r for r in rows if r]
    if rows:
        st.step = rows[-1].get("step")
    if not ev:
        evals = [r for r in rows if r.get("phase") in ("eval", "final_eval")]
        if evals:
            st.score = evals[-1].get("normalised_mean", evals[-1].get("return_mean"))


def _json_or_none(src: str | Path):
    """Parsed JSON of a file or a line; None when missing or half-written."""
    try:
        return json.loads(src.read_text() if isinstance(src, Path) else src)
    except (OSError, ValueError):
        return None


def world_model_key(trial: Trial, overrides: list[str], config: str | None) -> str | None:
    """Trials with the same key would fit the same cached world model (None: no world model)."""
    if trial.algo not in WORLD_MODEL_ALGOS:
        return None
    # MOMA-PPO seeds its world model with world_model.seed + the run's seed: the seed is part of the
    # model's identity, the observation scheme is not (the model predicts states)
    wm = sorted(o for o in overrides if o.startswith("world_model."))
    raw = json.dumps([trial.dataset, trial.seed, wm, config])
    return f"{Path(trial.dataset).stem}-s{trial.seed}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def train_command(st: TrialState, overrides: list[str], config: str | None, device: str) -> list[str]:
    base = [sys.executable, "-m", "offmarl.cli.main", "train", "--no-progress", "--device", device]
    t = st.trial
    if st.action == "resume":  # the run directory's config.yaml decides everything (nothing else is accepted)
        return base + ["--resume", str(st.run_dir)]
    cmd = base + ["--dataset", t.dataset, "--algo", t.algo, "--seed", str(t.seed), "--out", str(st.folder)]
    if t.obs:
        cmd += ["--obs", t.obs]
    if config:
        cmd += ["--config", config]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


try:  # loaded once here: the child of fork() must only make the system call
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux
    _LIBC = None


def _die_with_parent() -> None:
    """Linux: the trial gets SIGINT (-> checkpoint and stop) when its Ray worker dies, so that
    killing a sweep leaves no orphaned trainings."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def run_trial_process(cmd: list[str], folder: str, lock_dir: str | None, wm_key: str | None,
                      threads: int) -> dict[str, Any]:
    """Run one trial's command; the body of the Ray task (plain function, testable without Ray)."""
    folder_p = Path(folder)
    folder_p.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OFFMARL_NUM_THREADS", str(threads))
    env.setdefault("HF_HUB_OFFLINE", "1")
    lock = marker = None
    if wm_key is not None and lock_dir is not None:
        marker = Path(lock_dir) / f"{wm_key}.ready"
        if not marker.exists():
            lock = FileLock(Path(lock_dir) / f"{wm_key}.lock")
            lock.acquire()  # wait while another trial fits this world model
            if marker.exists():  # it finished while we waited: the cache has the model
                lock.release()
                lock = None
    out_log, err_log = folder_p / "stdout.log", folder_p / "stderr.log"
    t0 = time.time()
    with open(out_log, "a") as out_f, open(err_log, "a") as err_f:
        err_f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n")
        err_f.flush()
        err_start = err_f.tell()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509  (one prctl call, no locks)
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                if lock is not None and _world_model_ready(out_log):
                    marker.touch()
                    lock.release()
                    lock = None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)
            if lock is not None:
                if proc.returncode == 0 and marker is not None:
                    marker.touch()
                lock.release()
    tail = ""
    if proc.returncode != 0:
        with open(err_log) as f:
            f.seek(err_start)
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        tail = "\n".join(lines[-STDERR_TAIL:])
    return {"rc": proc.returncode, "stderr_tail": tail, "seconds": round(time.time() - t0, 1)}


def _world_model_ready(log: Path) -> bool:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return any(s in text for s in WORLD_MODEL_READY)


@dataclass
class SweepConfig:
    algos: list[str]
    datasets: list[str]
    seeds: list[int]
    out: Path
    obs: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    config: str | None = None
    address: str | None = None       # None: a local Ray instance bounded by this machine's cores
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    num_cpus: int | None = None      # local Ray only: CPUs Ray may use (default: all cores)
    device: str = "auto"
    command: str | None = None       # the command line, recorded in S/sweep.json for the report


def run_sweep(cfg: SweepConfig, on_update: Callable[[list[TrialState]], None] | None = None,
              poll_s: float = 2.0) -> list[TrialState]:
    """Run every trial not done yet on Ray; returns the final state of every trial."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    guard = FileLock(out / "sweep.lock")  # released by the kernel when this process ends, however it ends
    if not guard.acquire(blocking=False):
        raise SweepError(f"{out}: another `offmarl sweep` is running on this folder; wait for it or use another --out")
    try:
        return _run_sweep(cfg, out, on_update, poll_s)
    finally:
        guard.release()


def _previous_commands(path: Path) -> list[str]:
    """The commands recorded by earlier sweeps on this folder (none when unreadable)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    cmds = old.get("commands") or ([old["command"]] if old.get("command") else [])
    return [c for c in cmds if isinstance(c, str)]


def _run_sweep(cfg: SweepConfig, out: Path, on_update, poll_s: float) -> list[TrialState]:
    trials = plan(cfg.algos, cfg.datasets, cfg.obs, cfg.seeds)
    states = [inspect_trial(t, out) for t in trials]
    # every command that trained trials in this folder, oldest first (a folder may gather several
    # sweeps, e.g. fo and po schemes); the report cites them all
    commands = _previous_commands(out / "sweep.json")
    if cfg.command and cfg.command not in commands:
        commands.append(cfg.command)
    (out / "sweep.json").write_text(json.dumps({
        "command": cfg.command, "commands": commands, "algos": cfg.algos, "datasets": cfg.datasets, "obs": cfg.obs,
        "seeds": cfg.seeds,
        "set": cfg.overrides,
        "config": cfg.config, "cpus_per_trial": cfg.cpus_per_trial, "gpus_per_trial": cfg.gpus_per_trial}, indent=2))
    for st in states:  # a run directory with no checkpoint is a start that never got going: start again
        if st.action == "new" and st.status == "pending" and st.run_dir is not None:
            shutil.rmtree(st.run_dir)
            st.run_dir = None
    todo = [st for st in states if st.status == "pending"]
    if on_update:
        on_update(states)
    if not todo:
        return states
    _init_ray(cfg)
    task = ray.remote(run_trial_process).options(num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial,
                                                 max_retries=0)
    lock_dir = str(out / "locks")
    threads = max(1, int(cfg.cpus_per_trial))
    refs = {}
    for st in todo:
        cmd = train_command(st, cfg.overrides, cfg.config, cfg.device)
        refs[task.remote(cmd, str(st.folder), lock_dir, world_model_key(st.trial, cfg.overrides, cfg.config),
                         threads)] = st
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s, fetch_local=True)
            for ref in ready:
                st = refs[ref]
                try:
                    res = ray.get(ref)
                    st.status = "done" if res["rc"] == 0 else "failed"
                    st.error = res["stderr_tail"] if res["rc"] != 0 else ""
                except ray.exceptions.RayError as e:  # the worker died, the node went away, ...
                    st.status, st.error = "failed", f"{type(e).__name__}: {e}"
                refresh(st)
            for st in refs.values():
                if st.status == "pending" and run_dirs(st.folder):
                    st.status = "running"
                if st.status == "running":
                    refresh(st)
            if on_update:
                on_update(states)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return states


def ray_dir() -> Path:
    """Where a local Ray's session files and token go (the module docstring)."""
    return cache_dir("ray")


# Ray puts sockets at <temp dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store, and a Unix
# socket path may not exceed 107 bytes: a longer folder is reached through a short symbolic link.
_RAY_TEMP_MAX = 40


def _local_ray_files(kw: dict[str, Any]) -> None:
    """Point a local Ray's temp folder and auth token at ``ray_dir()`` (see the module docstring)."""
    root = ray_dir().resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        token = root / "auth_token"
        if not token.exists():  # what Ray would write to ~/.ray/auth_token: a random secret, owner-only
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex())
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)  # read by ray.init and the processes it starts
    if os.environ.get("RAY_TMPDIR"):
        return
    temp = root
    if len(str(temp)) > _RAY_TEMP_MAX:
        link = Path(tempfile.gettempdir()) / f"offmarl-ray-{hashlib.sha1(str(root).encode()).hexdigest()[:10]}"
        if not (link.is_symlink() and Path(os.readlink(link)) == root):
            if link.is_symlink():
                link.unlink()
            link.symlink_to(root, target_is_directory=True)
        temp = link
    kw["_temp_dir"] = str(temp)


def _init_ray(cfg: SweepConfig) -> None:
    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "logging_level": "ERROR"}
    if cfg.address:
        kw["address"] = cfg.address
    else:
        kw["num_cpus"] = cfg.num_cpus or os.cpu_count()
        kw["num_gpus"] = None
        kw["include_dashboard"] = False
        try:
            _local_ray_files(kw)
        except OSError as e:
            raise SweepError(f"cannot prepare Ray's folder {ray_dir()}: {e}") from None
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {cfg.address}" if cfg.address else "a local Ray instance"
        raise SweepError(f"cannot start or join {where}: {e}") from None


def summary(states: list[TrialState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for st in states:
        counts[st.status] = counts.get(st.status, 0) + 1
    return counts
