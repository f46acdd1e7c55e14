"""Connectivity figures: the FD figure marks exactly the frames scrubbing censored, the carpet has one row per signal
and one column per frame, the score and participation plots show the computed values, and every figure the
participant and group levels write is named so the report puts it under the intended item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity import figures as figs
from bids_ketamine.connectivity.participant_params import ConnectivityParticipantParams
from bids_ketamine.connectivity.scrubbing import censor_frames
from bids_ketamine.reports.sections import match_rule
from bids_ketamine.synthetic.bold import write_synthetic_bold_cohort
from .test_participant import inputs_for, run

FD_SPIKES = (10, 30)
INTENSITY_SPIKE = 50
EXPECTED_CENSORED = [9, 10, 11, 29, 30, 31, 49, 50, 51]


def _artist(fig, gid: str):
    found = [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"{len(found)} artists with gid {gid}"
    return found[0]


@pytest.fixture()
def planted_scrubbing():
    rng = np.random.default_rng(3)
    n = 80
    fd = rng.uniform(0.02, 0.3, n)
    fd[0] = np.nan  # fMRIPrep writes n/a for the first frame
    fd[list(FD_SPIKES)] = [0.9, 1.4]
    ratio = rng.uniform(0.7, 1.3, n)
    ratio[0] = 0.0
    ratio[INTENSITY_SPIKE] = 2.5
    censoring = censor_frames(fd, ratio, fd_threshold=0.5, dvars_ratio=1.6, neighbours=1)
    return fd, ratio, censoring


def test_fd_figure_marks_exactly_the_scrubbed_frames(planted_scrubbing):
    fd, ratio, censoring = planted_scrubbing
    assert np.flatnonzero(~censoring.keep).tolist() == EXPECTED_CENSORED  # the planted case itself
    fig = figs.framewise_displacement_figure(fd, censoring.keep, censoring.flagged_fd, censoring.flagged_dvars,
                                             fd_threshold=0.5, intensity_ratio=ratio, intensity_threshold=1.6,
                                             title="planted")
    censored = _artist(fig, figs.GID_CENSORED)
    assert np.asarray(censored.get_xdata()).tolist() == EXPECTED_CENSORED
    assert np.allclose(censored.get_ydata(), np.nan_to_num(fd)[EXPECTED_CENSORED])
    assert np.asarray(_artist(fig, figs.GID_FLAGGED_FD).get_xdata()).tolist() == list(FD_SPIKES)
    assert np.asarray(_artist(fig, figs.GID_FLAGGED_INTENSITY).get_xdata()).tolist() == [INTENSITY_SPIKE]
    spans = [a for a in fig.axes[0].patches if a.get_gid() == "censored-span"]
    assert len(spans) == 3  # three blocks of consecutive censored frames
    thresholds = [line for line in fig.axes[0].lines if np.allclose(line.get_ydata(), 0.5)
                  and line.get_linestyle() == "--"]
    assert len(thresholds) == 1
    # the figure shows the scrubbing's decision, not its own: another ``keep`` is drawn as given
    keep = np.ones(fd.size, bool)
    keep[[3, 4]] = False
    other = figs.framewise_displacement_figure(fd, keep, censoring.flagged_fd, censoring.flagged_dvars,
                                               fd_threshold=0.5)
    assert np.asarray(_artist(other, figs.GID_CENSORED).get_xdata()).tolist() == [3, 4]
    assert len(other.axes) == 1  # no intensity panel without the ratio


def test_fd_figure_refuses_mismatched_lengths(planted_scrubbing):
    fd, _, censoring = planted_scrubbing
    with pytest.raises(ValueError, match="keep has 79 frames, expected 80"):
        figs.framewise_displacement_figure(fd, censoring.keep[1:], censoring.flagged_fd, censoring.flagged_dvars,
                                           fd_threshold=0.5)


def test_carpet_one_row_per_signal_one_column_per_frame(planted_scrubbing):
    _, _, censoring = planted_scrubbing
    rng = np.random.default_rng(0)
    n_frames, n_parcels = censoring.keep.size, 12
    series = 100 + np.cumsum(rng.standard_normal((n_frames, n_parcels)), axis=0) + 0.5 * np.arange(n_frames)[:, None]
    groups = ["cortex"] * 8 + ["subcortex"] * 4
    fig = figs.carpet_figure(series, censoring.keep, groups=groups, title="planted")
    image = _artist(fig, figs.GID_CARPET).get_array()
    assert image.shape == (n_parcels, n_frames)
    assert np.allclose(image.mean(axis=1), 0, atol=1e-9) and np.allclose(image.std(axis=1), 1)
    assert np.asarray(_artist(fig, figs.GID_CENSORED).get_xdata()).tolist() == EXPECTED_CENSORED
    # a trend is removed before z-scoring: a pure linear ramp becomes a flat row of zeros
    ramp = np.column_stack([np.arange(n_frames, dtype=float), np.ones(n_frames)])
    assert np.allclose(figs.standardise_columns(ramp), 0)
    # more signals than rows: an even subsample, still one column per frame
    sub = figs.carpet_figure(series, censoring.keep, max_rows=5)
    assert _artist(sub, figs.GID_CARPET).get_array().shape == (5, n_frames)
    assert figs.carpet_rows(12, 5).tolist() == [0, 3, 6, 8, 11]
    with pytest.raises(ValueError, match="groups has 3 labels for 12 signals"):
        figs.carpet_figure(series, censoring.keep, groups=["a", "b", "c"])


def test_parcel_map_marks_every_parcel_with_its_value():
    values = np.array([-0.2, 0.1, 0.4, -0.05])
    xyz = np.array([[-40.0, 10, 20], [40, 10, 20], [-20, -60, 0], [20, -60, 0]])
    fig = figs.parcel_map_figure(values, centroids_mm=xyz, title="map", vmax=0.5)
    assert fig.axes  # a glass brain with a colour bar
    bars = figs.parcel_map_figure(values, title="no centroids")  # CIFTI: no volume for centroids
    heights = [p.get_height() for p in bars.axes[0].patches]
    assert np.allclose(heights, values)
    with pytest.raises(ValueError, match="centroids must be 4 x 3"):
        figs.parcel_map_figure(values, centroids_mm=xyz[:3])


# ------------------------------------------------------------------------------------------------ participant run
@pytest.fixture(scope="module")
def participant_outputs(tmp_path_factory):
    """Two subjects, placebo and ketamine; s02's ketamine session is excluded by scrubbing."""
    root = tmp_path_factory.mktemp("conn_figs")
    truth = write_synthetic_bold_cohort(root / "raw", root / "fmriprep", ["s01", "s02"],
                                        {"a": "placebo", "b": "ketamine"}, n_components=1, seed=7, n_volumes=60,
                                        high_motion=(("s02", "b"),))
    written = {sub: run(inputs_for(root / "fmriprep", sub), root / "out") for sub in ("s01", "s02")}
    return root / "out", truth, written


def _relative(paths, root: Path) -> list[str]:
    return sorted(Path(p).relative_to(root).as_posix() for p in paths if str(p).endswith(".png"))


def test_participant_run_writes_each_report_figure(participant_outputs):
    out, truth, written = participant_outputs
    figures = _relative(written["s01"], out)
    keys = [match_rule("participant", "connectivity", "figure", f).key for f in figures]
    assert sorted(keys) == ["carpet", "carpet", "delta-gbc", "fd", "fd", "gbc-map", "gbc-map"], figures
    assert all(f.startswith("sub-s01/figures/") and (out / f).stat().st_size > 2000 for f in figures)
    assert "sub-s01/figures/sub-s01_desc-ketamineminusplacebo_gbc.png" in figures
    # the excluded session still shows its motion (that is why it was excluded), but has no GBC or delta map
    keys = sorted(match_rule("participant", "connectivity", "figure", f).key
                  for f in _relative(written["s02"], out))
    assert keys == ["carpet", "carpet", "fd", "fd", "gbc-map"]
    # tables are unchanged by the figures: the censored frames are still those planted
    import json

    meta = json.loads(next((out / "sub-s01" / "ses-a" / "func").glob("*_timeseries.json")).read_text())
    assert meta["CensoredFrames"] == truth["expected_censored"]["s01"]["a"]


def test_participant_figures_show_the_run_results(participant_outputs, tmp_path):
    """The FD figure of a run marks the frames its time-series table reports as censored."""
    from bids_ketamine.connectivity.participant import (load_parcellation, participant_figures, process_run,
                                                        session_connectivity)

    out, truth, _ = participant_outputs
    params = ConnectivityParticipantParams()
    inputs = inputs_for(out.parent / "fmriprep", "s02")
    parcellation = load_parcellation(params)
    results = [process_run(r, parcellation, params) for r in inputs.bold]
    sessions = [session_connectivity(r.run.session, r.run.condition, [r], params) for r in results]
    built = participant_figures("s02", results, sessions, "placebo", parcellation, params, "MNI")
    by_name = {(e.get("ses"), e.get("desc"), s): f for f, e, s in built}
    for ses in ("a", "b"):
        fd_fig = by_name[(ses, "framewise", "motion")]
        marked = np.asarray(_artist(fd_fig, figs.GID_CENSORED).get_xdata()).tolist()
        assert marked == truth["expected_censored"]["s02"][ses]
        carpet = by_name[(ses, "carpet", "bold")]
        assert _artist(carpet, figs.GID_CARPET).get_array().shape == (len(parcellation.atlas.names), 60)


# ------------------------------------------------------------------------------------------------ group
def test_group_figures_named_for_the_report_and_show_the_results(tmp_path):
    from bids_ketamine.connectivity import group
    from bids_ketamine.io.derivatives import DerivativesWriter
    from .test_group import make_planted, small_params, write_tables

    class RecordingWriter(DerivativesWriter):
        """Keeps every figure it saves, so the test inspects exactly what was written."""

        saved: dict = {}

        def write_figure(self, fig, **kwargs):
            path = super().write_figure(fig, **kwargs)
            self.saved[Path(path).relative_to(tmp_path).as_posix()] = fig
            return path

    atlas = group._load_atlas(small_params())
    write_tables(tmp_path, make_planted(atlas), atlas)
    writer = RecordingWriter(tmp_path)
    params = small_params(null_calibration_pairs=0)  # the calibration is not what this test is about
    written = group.run_group(tmp_path, participants=None, sessions=None, params=params, design=None,
                              writer=writer, work_dir=tmp_path / "work", seed=1)
    figures = [Path(p).relative_to(tmp_path).as_posix() for p in written if str(p).endswith((".png", ".svg"))]
    assert sorted(figures) == sorted(writer.saved)
    keys = {match_rule("group", "connectivity", "figure", f).key: f for f in figures}
    assert keys["scores"] == "group/figures/atlas-DKcereb_desc-subjectscores_pca.png", figures
    assert keys["participation"] == "group/figures/desc-participationratio_dimensionality.png", figures
    assert all((tmp_path / keys[k]).stat().st_size > 2000 for k in ("scores", "participation"))

    scores_fig = writer.saved[keys["scores"]]
    stats = pd.read_csv(next(tmp_path.glob("group/*desc-ketaminepca_stats.tsv")), sep="\t")
    for drug, n_planted in (("ketamine", 2), ("lsd", 1)):
        scores = pd.read_csv(next(tmp_path.glob(f"group/*desc-{drug}pca_scores.tsv")), sep="\t")
        for pc in (1, 2):
            shown = _artist(scores_fig, f"scores-{drug}-pc{pc}").get_ydata()
            assert np.allclose(shown, scores[f"pc{pc}"], atol=1e-6)  # every subject, in table order
        title = next(ax.get_title() for ax in scores_fig.axes if ax.get_title().startswith(drug))
        assert f"{len(scores)} subjects, {n_planted} significant PC(s)" in title
    assert int(stats["significant"].sum()) == 2

    pr_fig = writer.saved[keys["participation"]]
    pairwise = pd.read_csv(tmp_path / "group" / "desc-dimensionalitypairwise_stats.tsv", sep="\t").iloc[0]
    per_drug = pd.read_csv(tmp_path / "group" / "desc-dimensionality_stats.tsv", sep="\t")
    assert "subject-level permutation tests, Holm" in pr_fig.axes[0].get_title()
    assert f"{pairwise['difference']:+.3g}" in pr_fig.texts[0].get_text()
    ci = _artist(pr_fig, "participation-ci")
    for drug in ("ketamine", "lsd"):
        shown = np.asarray(_artist(pr_fig, f"participation-{drug}").get_ydata())
        row = per_drug.set_index("drug").loc[drug]
        assert shown.size == row["n_subsamples"]
        assert np.isclose(shown.mean(), row["pr_mean"], rtol=1e-5)
    np.testing.assert_allclose(ci.get_ydata(), per_drug["pr_mean"], rtol=1e-4)


def test_participation_figure_with_one_drug_says_there_is_no_comparison():
    from bids_ketamine.connectivity.dimensionality import compare_dimensionality

    rng = np.random.default_rng(2)
    comparison = compare_dimensionality({"ketamine": rng.standard_normal((8, 30))}, subsample_size=6,
                                        n_subsamples=15, seed=3)
    fig = figs.participation_ratio_figure(comparison.subsamples, comparison.per_drug, comparison.pairwise)
    assert "one drug: no comparison" in fig.axes[0].get_title()
    assert np.allclose(_artist(fig, "participation-ketamine").get_ydata(), comparison.subsamples["participation_ratio"])
