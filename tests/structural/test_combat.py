"""ComBat of our own: planted site effects removed, covariate effects kept, fitted on training data only."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.structural.combat import ComBatHarmonizer, UnseenSiteWarning, apply_combat, fit_combat


def _planted(n_per_site=40, p=30, seed=0):
    """Three sites with known location/scale effects and an age effect that must survive harmonisation."""
    rng = np.random.default_rng(seed)
    sites = np.repeat(["a", "b", "c"], n_per_site)
    age = rng.uniform(20, 60, sites.size)
    age_effect = rng.normal(0, 0.05, p)
    loc = {"a": rng.normal(0, 2, p), "b": rng.normal(0, 2, p), "c": rng.normal(0, 2, p)}
    scale = {"a": 1.0, "b": 2.0, "c": 0.5}
    noise = rng.standard_normal((sites.size, p))
    x = 10 + np.outer(age, age_effect) + np.stack([loc[s] for s in sites]) + \
        noise * np.array([scale[s] for s in sites])[:, None]
    return x, sites, age[:, None], age_effect


def test_site_location_and_scale_removed_and_age_kept():
    x, sites, age, age_effect = _planted()
    out = apply_combat(fit_combat(x, sites, age), x, sites, age)
    # after removing the (kept) age effect, site means agree and site SDs agree
    resid = out - np.outer(age[:, 0], np.polyfit(age[:, 0], out, 1)[0])
    means = np.stack([resid[sites == s].mean(0) for s in "abc"])
    sds = np.stack([resid[sites == s].std(0) for s in "abc"])
    raw_means = np.stack([x[sites == s].mean(0) for s in "abc"])
    assert np.abs(means - means.mean(0)).max() < 0.35 < np.abs(raw_means - raw_means.mean(0)).max()
    assert np.all(sds.max(0) / sds.min(0) < 1.7)  # raw ratio is 4 (scales 2 vs 0.5)
    slope = np.polyfit(age[:, 0], out, 1)[0]
    assert np.corrcoef(slope, age_effect)[0, 1] > 0.9
    assert np.allclose(slope, age_effect, atol=0.03)


def test_transform_of_a_seen_site_uses_training_estimates_only():
    x, sites, age, _ = _planted()
    train = np.arange(x.shape[0]) % 4 != 0
    model = fit_combat(x[train], sites[train], age[train])
    test = np.flatnonzero(~train)
    together = apply_combat(model, x[test], sites[test], age[test])
    one_by_one = np.vstack([apply_combat(model, x[[i]], sites[[i]], age[[i]]) for i in test])
    assert np.allclose(together, one_by_one)


def test_unseen_site_estimated_from_its_own_unlabelled_subjects():
    x, sites, age, _ = _planted()
    train = sites != "c"
    model = fit_combat(x[train], sites[train], age[train])
    out = apply_combat(model, x, sites, age)
    train_mean = out[train].mean(0)
    assert np.abs(out[sites == "c"].mean(0) - train_mean).mean() < 0.3
    assert np.abs(x[sites == "c"].mean(0) - train_mean).mean() > 1.0


def test_small_unseen_site_left_unharmonised_with_warning():
    x, sites, age, _ = _planted()
    train = sites != "c"
    model = fit_combat(x[train], sites[train], age[train])
    few = np.flatnonzero(sites == "c")[:3]
    with pytest.warns(UnseenSiteWarning, match="left un-harmonised"):
        out = apply_combat(model, x[few], sites[few], age[few], min_unseen_site_size=5)
    assert np.array_equal(out, x[few])


def test_single_site_is_identity_and_outcome_is_never_used():
    x, _, age, _ = _planted()
    frame = pd.DataFrame(x, columns=[f"r{j}" for j in range(x.shape[1])])
    frame.insert(0, "site", "s1")
    h = ComBatHarmonizer(site_column="site").fit(frame)
    assert np.allclose(h.transform(frame), x)
    x3, sites, age, _ = _planted()
    frame = pd.DataFrame(x3, columns=[f"r{j}" for j in range(x3.shape[1])])
    frame.insert(0, "site", sites)
    frame.insert(1, "age", age[:, 0])
    rng = np.random.default_rng(1)
    a = ComBatHarmonizer(covariate_columns=("age",)).fit(frame, rng.integers(0, 2, len(frame))).transform(frame)
    b = ComBatHarmonizer(covariate_columns=("age",)).fit(frame, rng.integers(0, 2, len(frame))).transform(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(a, b)
