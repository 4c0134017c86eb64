"""offmarl.data.dataset.MultiAgentDataset: validation messages, episode helpers, views, sampling."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from offmarl.data.dataset import DatasetError, DatasetMeta, MultiAgentDataset, state_action_coverage


def _arrays(ds: MultiAgentDataset) -> dict:
    keys = ("states", "next_states", "observations", "next_observations", "actions", "rewards", "terminals",
            "timeouts", "avail_actions", "next_avail_actions")
    return {k: getattr(ds, k) for k in keys}


def _build(ds, origin="data.h5", **changes):
    return MultiAgentDataset(**{**_arrays(ds), **changes}, meta=ds.meta, origin=origin)


# ------------------------------------------------------------------------- validation
def test_validation_errors_name_origin_and_key(ant_dataset):
    t = len(ant_dataset)
    cases = {
        "'states'": {"states": ant_dataset.states[:, :26]},
        "'observations'": {"observations": ant_dataset.observations[:-1]},
        "'actions'": {"actions": ant_dataset.actions[:, :3]},
        "'next_states'": {"next_states": None},
    }
    for key, change in cases.items():
        with pytest.raises(DatasetError) as ei:
            _build(ant_dataset, **change)
        assert "data.h5" in str(ei.value) and key in str(ei.value), str(ei.value)

    nan_obs = ant_dataset.next_observations.copy()
    nan_obs[5, 2, 1] = np.nan
    nan_msg = r"data\.h5: key 'next_observations' contains NaN or inf \(first at transition 5\)"
    with pytest.raises(DatasetError, match=nan_msg):
        _build(ant_dataset, next_observations=nan_obs)

    with pytest.raises(DatasetError, match=r"data\.h5: the dataset is empty \(key 'rewards'"):
        _build(ant_dataset, **{k: v[:0] for k, v in _arrays(ant_dataset).items() if v is not None})

    timeouts = ant_dataset.timeouts.copy()
    timeouts[-1] = False
    with pytest.raises(DatasetError, match=rf"data\.h5: the last transition ends no episode .* index {t - 1}"):
        _build(ant_dataset, timeouts=timeouts, terminals=np.zeros(t, bool))


def test_discrete_validation(make_coordination_dataset):
    ds = make_coordination_dataset(t=6)
    bad = ds.actions.copy()
    bad[2, 1] = 2
    with pytest.raises(DatasetError, match=r"'actions' has values outside \[0, 2\)"):
        _build(ds, actions=bad)
    with pytest.raises(DatasetError, match="'avail_actions'"):
        _build(ds, avail_actions=ds.avail_actions[:, :, :1])


def test_meta_dict_round_trip(ant_dataset):
    d = ant_dataset.meta.to_dict()
    assert isinstance(d["obs_dims"], list)
    assert DatasetMeta.from_dict({**d, "unknown_future_field": 1}) == ant_dataset.meta


# ------------------------------------------------------------------------- episodes
def test_episode_helpers(ant_dataset):
    ends = np.flatnonzero(ant_dataset.episode_ends)
    assert ant_dataset.n_episodes == len(ends)
    lengths = np.diff(np.r_[-1, ends])
    np.testing.assert_array_equal(ant_dataset.episode_lengths(), lengths)
    starts = np.r_[0, ends[:-1] + 1]
    np.testing.assert_allclose(ant_dataset.episode_returns(),
                               [ant_dataset.rewards[s:e + 1].sum() for s, e in zip(starts, ends)],
                               rtol=1e-5)
    for s, e in zip(starts, ends):
        assert (ant_dataset.episode_start[s:e + 1] == s).all()
    assert ant_dataset.normalise_return(3879.7) == pytest.approx(1.0)
    assert ant_dataset.normalise_return(-325.6) == pytest.approx(0.0)


def test_subset_whole_episodes(ant_dataset):
    first_end = int(np.flatnonzero(ant_dataset.episode_ends)[0])
    sub = ant_dataset.subset(first_end + 3)  # cuts inside episode 2 -> only episode 1 kept
    assert len(sub) == first_end + 1 and sub.n_episodes == 1
    assert len(ant_dataset.subset(1)) == first_end + 1  # at least one episode


def test_with_obs_rederives_from_states(ant_dataset):
    fo = ant_dataset.with_obs("fo")
    assert fo.meta.obs_dims == (27,) * 4 and fo.meta.obs_scheme == "fo"
    np.testing.assert_array_equal(fo.observations[:, 2], ant_dataset.states)
    back = fo.with_obs("po")
    np.testing.assert_array_equal(back.observations, ant_dataset.observations)


def test_checksum_and_coverage(ant_dataset):
    assert ant_dataset.checksum() == _build(ant_dataset).checksum()
    r = ant_dataset.rewards.copy()
    r[0] += 1
    assert _build(ant_dataset, rewards=r).checksum() != ant_dataset.checksum()
    assert _build(ant_dataset, rewards=r).dynamics_checksum() != ant_dataset.dynamics_checksum()
    # another observation scheme of the same data: a different dataset, the same dynamics
    fo = ant_dataset.with_obs("fo")
    assert fo.checksum() != ant_dataset.checksum() and fo.dynamics_checksum() == ant_dataset.dynamics_checksum()
    cov = state_action_coverage(ant_dataset)
    assert 0 < cov <= 1
    stats = ant_dataset.stats()
    assert stats["transitions"] == len(ant_dataset) and "normalised_score_mean" in stats


# ------------------------------------------------------------------------- sampling
def test_sample_and_histories(ant_dataset):
    g = torch.Generator().manual_seed(0)
    b = ant_dataset.sample(16, generator=g)
    assert b["observations"].shape == (16, 4, 15) and b["actions"].dtype == torch.float32
    assert b["terminals"].dtype == torch.bool

    idx = torch.tensor([0, 1, 25, 59])
    hist, valid = ant_dataset.history_indices(idx, 3)
    start = torch.as_tensor(ant_dataset.episode_start)[idx]
    assert (valid == (hist >= start[:, None]) & (idx[:, None] - 3 + torch.arange(3) >= start[:, None])).all()
    assert not valid[0].any() and valid[1].tolist() == [False, False, True]
    _, np_valid = ant_dataset.history_indices(idx.numpy(), 3)
    np.testing.assert_array_equal(np_valid, valid.numpy())

    h = ant_dataset.sample_histories(8, 4, generator=g)
    assert h["hist_obs"].shape == (8, 4, 4, 15) and h["hist_mask"].shape == (8, 4)
    assert (h["hist_obs"][~h["hist_mask"]] == 0).all()


def test_discrete_tensors(make_coordination_dataset):
    ds = make_coordination_dataset(t=8)
    t = ds.tensors()
    assert t["actions"].dtype == torch.int64 and t["avail_actions"].dtype == torch.bool
    assert ds.n_episodes == 8  # one-step episodes
    assert dataclasses.replace(ds).meta.discrete
