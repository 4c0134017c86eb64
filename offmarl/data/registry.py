"""Named datasets: ``ant-medium`` -> a native file, a local Minari/D4RL file, or generation.

Names are versioned: ``ant-medium`` means the recipe's current version, ``ant-medium-v1``; a
version's recipe never changes, and the registry records the sha256 (``content_sha256``), episode
count and score of its canonical file (default size, seed 0), which ``offmarl datasets verify``
and ``generate`` compare against.

Resolution order for a name (docs/datasets.md):
1. the native file ``$OFFMARL_DATA_DIR/<name>-v<version>.hdf5`` (default data dir ~/.offmarl/datasets);
2. a matching local Minari dataset (``$MINARI_DATASETS_PATH`` or ~/.minari/datasets) or D4RL
   file (``$D4RL_DATASET_DIR`` or ~/.d4rl/datasets) — imported and saved natively;
3. generation from the behaviour policies shipped in offmarl/data/policies (a message says so).
A path to a file is loaded directly (native offmarl HDF5, or D4RL layout with ``--env``).
The recipe of each name is documented in its card, datasets/<name>.md.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from offmarl.data.dataset import DatasetError, MultiAgentDataset
from offmarl.data.sources.d4rl import read_d4rl
from offmarl.data.sources.minari import read_minari
from offmarl.data.storage import load_dataset_file, save_dataset
from offmarl.envs import suggest

# D4RL's ant reference returns (Fu et al., 2020; as used by the MOMA-PPO slides) and the MOMA-PPO reacher ones.
ANT_REF = (-325.6, 3879.7)
REACHER_REF = (-11.1446, -4.2371)
COORD_REF = (0.0, 1.0)


@dataclass
class Recipe:
    name: str
    env: str
    summary: str
    default_size: int
    ref: tuple[float, float]
    minari_ids: tuple[str, ...] = ()
    d4rl_files: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)
    # override blocks this dataset selects (offmarl/driver.py: a block of configs/<algo>.yaml or
    # the <algo> block of configs/<tag>.yaml); chosen explicitly here, never from the name
    config: tuple[str, ...] = ()
    version: int = 1
    # the canonical file (default_size, seed 0): content_sha256, episodes, mean normalised score
    # (None: not recorded yet, `verify` says so)
    sha256: str | None = None
    episodes: int | None = None
    score: float | None = None

    @property
    def versioned(self) -> str:
        return f"{self.name}-v{self.version}"


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("ant-random", "ant-4x2", "Ant-v5, the randomly initialised SAC actor", 1_000_000, ANT_REF,
           d4rl_files=("ant_random-v2.hdf5", "ant_random.hdf5"), params={"policy": "random"},
           config=("ant", "random")),
    Recipe("ant-medium", "ant-4x2", "Ant-v5, a SAC actor stopped at about half the expert's return", 1_000_000, ANT_REF,
           minari_ids=("mujoco/ant/medium-v0",), d4rl_files=("ant_medium-v2.hdf5", "ant_medium.hdf5"),
           params={"policy": "medium"}, config=("ant", "medium")),
    Recipe("ant-expert", "ant-4x2", "Ant-v5, the fully trained SAC actor", 1_000_000, ANT_REF,
           minari_ids=("mujoco/ant/expert-v0",), d4rl_files=("ant_expert-v2.hdf5", "ant_expert.hdf5"),
           params={"policy": "expert"}, config=("ant", "expert")),
    Recipe("ant-full-replay", "ant-4x2", "Ant-v5, every SAC checkpoint from random to expert (emulated replay)",
           1_000_000, ANT_REF, d4rl_files=("ant_full_replay-v2.hdf5", "ant_full-replay-v2.hdf5"),
           params={"policy": "full_replay"}, config=("ant", "full-replay")),
    Recipe("reacher-expert-mix", "reacher-2x1", "Reacher 2x1, half clockwise and half counter-clockwise experts",
           1_000_000, REACHER_REF, config=("expert",)),  # OMAR's "expert" table entry: expert data
    Recipe("coordination-favorable", "coordination", "both agents mostly right (p=0.8)", 10_000, COORD_REF,
           params={"p_right": (0.8, 0.8)}, config=("coordination",)),
    Recipe("coordination-neutral", "coordination", "both agents uniform (p=0.5)", 10_000, COORD_REF,
           params={"p_right": (0.5, 0.5)}, config=("coordination",)),
    Recipe("coordination-unfavorable", "coordination", "agent 0 mostly right (p=0.8), agent 1 mostly left (p=0.2)",
           10_000, COORD_REF, params={"p_right": (0.8, 0.2)}, config=("coordination",)),
]}


# The canonical files, made with `offmarl datasets generate NAME` (default size, seed 0) and
# checked with `offmarl datasets verify NAME`: (content_sha256, episodes, mean normalised score).
CANONICAL: dict[str, tuple[str, int, float]] = {
    "ant-random-v1": ("138cd3e9bb0720240d690be62d9ed5de2382f6adee491a949dd7f2562d0baf06", 6627, 0.0519),
    "ant-expert-v1": ("28de520189c07e7751cdc24107a52522e340112101821af72dba3ba514a229d5", 1049, 1.1204),
    "ant-full-replay-v1": ("c63e9602f66f7422944a5b1c253970714bb19b0e7664384b498f13a072f7919e", 1696, 0.3875),
    "ant-medium-v1": ("68e5077f32b39d1207301c48d34d1e114ba2d3cc96a6b9bc2fc3a4aee793a397", 1519, 0.5425),
    "coordination-favorable-v1": ("3f65ff036fd3843186143302c6fb3f871a272394f9105ab7ff714f2e00c57fab", 10000, 0.6748),
    "coordination-neutral-v1": ("4f6c52d14c18cf08cb828c29f63cc51702a61f92bfee19b5443b800f536d3b36", 10000, 0.4911),
    "reacher-expert-mix-v1": ("2746a9471490c22248760cc523e3b93fa95cd782541f90562c3940e87906dca3", 20000, 0.7199),
    "coordination-unfavorable-v1": ("99bbb75523f806ade7dd4aeb5ad98aaa7d6118f52ba961ae03c7791b89526eeb", 10000, 0.3127),
}
for _name, (_sha, _eps, _score) in CANONICAL.items():
    _rec = RECIPES[_name.rsplit("-v", 1)[0]]
    _rec.sha256, _rec.episodes, _rec.score = _sha, _eps, _score


def data_dir() -> Path:
    return Path(os.environ.get("OFFMARL_DATA_DIR", Path.home() / ".offmarl" / "datasets")).expanduser()


def native_path(name: str) -> Path:
    """``$OFFMARL_DATA_DIR/<name>-v<version>.hdf5`` (a file of another version is never picked up)."""
    return data_dir() / f"{recipe(name).versioned}.hdf5"


def recipe(name: str) -> Recipe:
    """The recipe of ``ant-medium`` or ``ant-medium-v1`` (an unknown version is an error)."""
    if name in RECIPES:
        return RECIPES[name]
    base, sep, version = name.rpartition("-v")
    if sep and base in RECIPES and version.isdigit():
        rec = RECIPES[base]
        if int(version) != rec.version:
            raise DatasetError(f"{base} has no version v{version}; this offmarl has {rec.versioned}")
        return rec
    raise DatasetError(f"unknown dataset {name!r}.{suggest(name, RECIPES)} "
                       f"Known: {', '.join(RECIPES)}; or give a path to an .hdf5 file.")


def verdict(ds: MultiAgentDataset, name: str) -> tuple[bool | None, str]:
    """Compare ``ds`` with the registry's record of ``name``: (True = match, False = mismatch,
    None = nothing comparable), and the one line ``verify`` and ``generate`` print."""
    rec = recipe(name)
    sha = ds.content_sha256()
    st = ds.stats()
    score = st.get("normalised_score_mean", st["return_mean"])
    what = f"sha256 {sha[:16]}, {len(ds):,} transitions, {st['episodes']:,} episodes, score {score:.3f}"
    if rec.sha256 is None:
        return None, f"{rec.versioned}: {what}; the registry records no checksum for this version"
    if len(ds) != rec.default_size:
        return None, (f"{rec.versioned}: {what}; not comparable with the registry's file of "
                      f"{rec.default_size:,} transitions")
    if sha == rec.sha256:
        return True, f"{rec.versioned}: match ({what})"
    return False, (f"{rec.versioned}: MISMATCH: {what}; the registry's file has sha256 {rec.sha256[:16]}, "
                   f"{rec.episodes:,} episodes, score {rec.score:.3f}")


def is_file_reference(name: str) -> bool:
    return name.endswith((".hdf5", ".h5")) or os.sep in name or Path(name).exists()


def load(name_or_path: str, env: str | None = None, obs: str | None = None, generate: bool = True,
         log: Callable[[str], None] = print) -> MultiAgentDataset:
    """Resolve a dataset name or file (see module doc). ``obs`` re-derives observations."""
    if is_file_reference(name_or_path):
        ds = _load_file(Path(name_or_path), env)
    else:
        rec = recipe(name_or_path)
        path = native_path(rec.name)
        if path.exists():
            ds = load_dataset_file(path)
            ds.meta.name = rec.versioned
            if len(ds) < rec.default_size:  # e.g. left by `datasets generate NAME --size 20000`
                log(f"{rec.name}: using the local copy {path}: {len(ds):,} transitions, fewer than the recipe's "
                    f"{rec.default_size:,}; for the full dataset run `offmarl datasets generate {rec.name} --force`")
        else:
            ds = _import_local(rec, log)
            if ds is None:
                if not generate:
                    raise DatasetError(f"{rec.versioned} is not in {data_dir()}; "
                                       f"run `offmarl datasets generate {rec.name}`")
                log(f"{rec.name}: no local copy in {data_dir()} and no local Minari/D4RL file; "
                    f"generating it from the shipped behaviour policies ({rec.default_size:,} transitions)")
                ds = build(rec.name, rec.default_size, seed=0)
                log(verdict(ds, rec.name)[1])
            save_dataset(ds, path)
            log(f"saved {path}")
    if obs is not None and obs != ds.meta.obs_scheme:
        ds = ds.with_obs(obs)
    return ds


def _load_file(path: Path, env: str | None) -> MultiAgentDataset:
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    try:
        return load_dataset_file(path, env=env)
    except DatasetError as e:
        if "d4rl" in str(e).lower() and env:
            return read_d4rl(path, env=env)
        raise


def _import_local(rec: Recipe, log) -> MultiAgentDataset | None:
    d4rl_root = Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets")).expanduser()
    for fname in rec.d4rl_files:
        if (d4rl_root / fname).exists():
            log(f"{rec.name}: importing the local D4RL file {d4rl_root / fname}")
            ds = read_d4rl(d4rl_root / fname, env=rec.env)
            return _with_name(ds, rec)
    minari_root = Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets")).expanduser()
    for mid in rec.minari_ids:
        if (minari_root / mid).exists():
            log(f"{rec.name}: importing the local Minari dataset {mid}")
            return _with_name(read_minari(mid, env=rec.env), rec)
    return None


def _with_name(ds: MultiAgentDataset, rec: Recipe) -> MultiAgentDataset:
    ds.meta.name = rec.versioned
    if ds.meta.ref_min_return is None:
        ds.meta.ref_min_return, ds.meta.ref_max_return = rec.ref
    return ds


# ---------------------------------------------------------------------- generation
def ant_policy_selection() -> dict:
    """Which shipped SAC checkpoints play random / medium / expert / full-replay
    (written by datasets/recipes/select_ant_policies.py from the training's progress.csv)."""
    from offmarl.data.behaviour import policy_dir  # lazy: torch; `offmarl datasets list` stays light

    path = policy_dir("ant") / "selection.json"
    if not path.exists():
        raise DatasetError(
            f"{path} is missing: the ant behaviour policies have not been selected yet "
            "(train them with datasets/recipes/train_ant_sac.py, then run datasets/recipes/select_ant_policies.py)")
    return json.loads(path.read_text())


def build(name: str, size: int | None = None, seed: int = 0, progress: Callable[[int], None] | None = None,
          n_envs: int = 16) -> MultiAgentDataset:
    """Generate the named dataset (``size`` transitions; default: the recipe's)."""
    from offmarl.data import generate as g  # lazy: torch and the simulators, only when generating

    rec = recipe(name)
    size = int(size or rec.default_size)
    if size <= 0:
        raise DatasetError(f"--size must be positive, got {size}")
    meta = {"name": rec.versioned, "ref_min_return": rec.ref[0], "ref_max_return": rec.ref[1]}
    if rec.env == "coordination":
        meta["generator"] = f"independent per-agent choice, P(right) = {rec.params['p_right']}"
        return g.generate_coordination(rec.params["p_right"], size, seed, meta_fields=meta)

    from offmarl.data.behaviour import load_actor, policy_dir  # lazy: torch

    if rec.env == "reacher-2x1":
        d = policy_dir("reacher")
        segs = [g.Segment(load_actor(d / "expert_cw.pt"), 0.5, "expert_cw"),
                g.Segment(load_actor(d / "expert_ccw.pt"), 0.5, "expert_ccw")]
        meta["generator"] = "SAC experts on Reacher-v5, half clockwise, half counter-clockwise (stochastic actions)"
    else:
        sel = ant_policy_selection()
        d = policy_dir("ant")
        which = rec.params["policy"]
        if which == "full_replay":
            files = sel["full_replay"]
            segs = [g.Segment(load_actor(d / f), 1.0, Path(f).stem) for f in files]
            meta["generator"] = f"{len(files)} SAC checkpoints from random init to expert, equal shares (stochastic)"
        else:
            segs = [g.Segment(load_actor(d / sel[which]), 1.0, Path(sel[which]).stem)]
            meta["generator"] = f"SAC actor {sel[which]} on Ant-v5 (stochastic actions)"
    return g.generate_with_actors(rec.env, segs, size, seed, n_envs=n_envs, meta_fields=meta, progress=progress)
