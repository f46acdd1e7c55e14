"""Synthetic fMRS crossover -> participant level -> group mixed model recovers the planted naltrexone x time effect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.design import StudyDesign
from bids_ketamine.errors import EXIT_BAD_DATA, BadDataError
from bids_ketamine.inputs import MrsAcquisition, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.spectroscopy import group, participant
from bids_ketamine.spectroscopy.params import SpectroscopyParams
from bids_ketamine.synthetic.mrs import write_synthetic_fmrs_cohort

SESSIONS = {"placebo": "placebo", "naltrexone": "naltrexone"}


def _inputs(root: Path, label: str) -> ParticipantInputs:
    acqs = []
    for ses in sorted(SESSIONS):
        folder = root / f"sub-{label}" / f"ses-{ses}" / "mrs"
        stem = f"sub-{label}_ses-{ses}_task-infusion"
        acqs.append(MrsAcquisition(svs=folder / f"{stem}_svs.nii.gz",
                                   references={"water": folder / f"{stem}_mrsref.nii.gz"},
                                   events=folder / f"{stem}_events.tsv", session=ses, task="infusion",
                                   pretreatment=SESSIONS[ses], condition="ketamine"))
    return ParticipantInputs(subject=label, mrs=tuple(acqs))


def test_same_seed_gives_identical_files(tmp_path):
    subjects = {"a1": "F", "a2": "M"}
    kwargs = dict(seed=11, n_transients=12, n_coils=2, n_points=512)
    truth_a = write_synthetic_fmrs_cohort(tmp_path / "a", subjects, {"placebo": "placebo"}, **kwargs)
    truth_b = write_synthetic_fmrs_cohort(tmp_path / "b", subjects, {"placebo": "placebo"}, **kwargs)
    write_synthetic_fmrs_cohort(tmp_path / "c", subjects, {"placebo": "placebo"}, **{**kwargs, "seed": 12})
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files_a) == 2 * 5  # svs, mrsref (+ their sidecars) and events per subject
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    svs = next(r for r in files_a if r.name.endswith("_svs.nii.gz"))
    assert (tmp_path / "a" / svs).read_bytes() != (tmp_path / "c" / svs).read_bytes()
    assert json.dumps(truth_a, sort_keys=True) == json.dumps(truth_b, sort_keys=True)


def test_bad_participant_fails_with_exit_65_and_others_run(tmp_path):
    root = tmp_path / "bids"
    write_synthetic_fmrs_cohort(root, {"b1": "F", "b2": "M"}, SESSIONS, seed=2, n_transients=24, n_coils=2)
    # corrupt b1's placebo session: truncate the file
    bad = root / "sub-b1" / "ses-placebo" / "mrs" / "sub-b1_ses-placebo_task-infusion_svs.nii.gz"
    bad.write_bytes(bad.read_bytes()[:4000])
    writer = DerivativesWriter(tmp_path / "out")
    params = SpectroscopyParams(figures=False)
    with pytest.raises(BadDataError) as exc:
        with writer.staged("b1", "spectroscopy") as staged:
            participant.run_participant(_inputs(root, "b1"), params=params, design=StudyDesign(), writer=staged,
                                        work_dir=tmp_path, seed=0)
    assert exc.value.exit_code == EXIT_BAD_DATA and str(bad) in str(exc.value)
    assert not list((tmp_path / "out").glob("sub-b1/**/*_mrsfit.tsv"))
    with writer.staged("b2", "spectroscopy") as staged:
        outs = participant.run_participant(_inputs(root, "b2"), params=params, design=StudyDesign(),
                                           writer=staged, work_dir=tmp_path, seed=0)
    assert len(list((tmp_path / "out").glob("sub-b2/**/*_mrsfit.tsv"))) == 2 and outs


@pytest.fixture(scope="module")
def cohort_results(tmp_path_factory):
    base = tmp_path_factory.mktemp("fmrs")
    root, out = base / "bids", base / "out"
    labels = [f"m{i + 1:03d}" for i in range(8)]
    sexes = {lab: ("F" if i % 2 else "M") for i, lab in enumerate(labels)}
    truth = write_synthetic_fmrs_cohort(root, sexes, SESSIONS, seed=3, n_transients=128)
    writer = DerivativesWriter(out, dataset_links={"raw": root})
    writer.init_dataset()
    params = SpectroscopyParams(figures=False, group_metabolites=("Glx", "mI"))
    design = StudyDesign()
    rows = []
    rng = np.random.default_rng(0)
    for i, lab in enumerate(labels):
        order = ["placebo", "naltrexone"] if (i // 2) % 2 == 0 else ["naltrexone", "placebo"]
        for ses in SESSIONS:
            base_madrs = float(rng.normal(30, 4))
            gain = 12.0 if ses == "placebo" else 12.0 * 0.72
            rows.append({"participant_id": lab, "session_id": ses, "condition": "ketamine", "pretreatment": ses,
                         "period": order.index(ses) + 1, "madrs_baseline": base_madrs,
                         "madrs_24h": base_madrs - gain + float(rng.normal(0, 2.5))})
        with writer.staged(lab, "spectroscopy") as staged:
            participant.run_participant(_inputs(root, lab), params=params, design=design, writer=staged,
                                        work_dir=base, seed=0)
    participants = pd.DataFrame({"participant_id": labels, "sex": [sexes[x] for x in labels]})
    outputs = group.run_group(out, participants=participants, sessions=pd.DataFrame(rows), params=params,
                              design=design, writer=writer, work_dir=base, seed=0)
    return truth, out, outputs


def test_participant_tables_have_blocks_crlb_and_qc(cohort_results):
    _, out, _ = cohort_results
    tables = sorted(out.glob("sub-*/ses-*/mrs/*_mrsfit.tsv"))
    assert len(tables) == 16
    t = pd.read_csv(tables[0], sep="\t")
    assert sorted(t["block"].unique()) == [-2, -1, 0, 1, 2, 3]
    glx = t[t["metabolite"] == "Glx"]
    assert (glx["crlb_percent"] < 5).all() and glx["qc_pass"].all()
    sidecar = json.loads(tables[0].with_suffix(".json").read_text())
    assert all(c in sidecar for c in t.columns)
    # water scaling (default fractions, 3T relaxation) returns the planted molar concentrations
    truth, _, _ = cohort_results
    for name in ("Cr", "NAA", "mI"):
        molar = t[t["metabolite"] == name]["molar_mM"].median()
        assert molar == pytest.approx(truth["concentrations_mM"][name], rel=0.12), name
    tcr = t[t["metabolite"] == "tCr"]["molar_mM"].median()
    assert tcr == pytest.approx(truth["concentrations_mM"]["Cr"] + truth["concentrations_mM"]["PCr"], rel=0.05)


def test_group_model_recovers_planted_pretreatment_by_time(cohort_results):
    truth, out, outputs = cohort_results
    stats = pd.read_csv(out / "group" / "spectroscopy" / "desc-fmrslmm_stats.tsv", sep="\t")
    row = stats[(stats["outcome"] == "Glx/tNAA") & (stats["term"] == "pretreatment_x_time")].iloc[0]
    planted = truth["glx_tnaa_per_minute"]["pretreatment_x_time"]
    assert planted < 0
    assert np.sign(row["estimate"]) == np.sign(planted)
    assert row["ci_low"] <= planted <= row["ci_high"]
    assert row["p"] < 0.05
    time_row = stats[(stats["outcome"] == "Glx/tNAA") & (stats["term"] == "time")].iloc[0]
    assert time_row["ci_low"] <= truth["glx_tnaa_per_minute"]["time"] <= time_row["ci_high"]
    # a metabolite without a planted change shows no significant pretreatment x time effect
    mi = stats[(stats["outcome"] == "mI/tNAA") & (stats["term"] == "pretreatment_x_time")].iloc[0]
    assert mi["ci_low"] <= 0 <= mi["ci_high"]


def test_participant_dynamic_fit_tables(cohort_results):
    """Default time_fit 'dynamic': every session's _mrsdynamic.tsv (documented sidecar) gives the planted Glx/tNAA
    slope within its interval, and _mrsfit.tsv carries the per-block values the joint fit implies."""
    truth, out, _ = cohort_results
    tables = sorted(out.glob("sub-*/ses-*/mrs/*_mrsdynamic.tsv"))
    assert len(tables) == 16
    covered = 0
    for path in tables:
        t = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert all(c in sidecar for c in t.columns) and sidecar["DynamicFit"]["qc_pass"]
        row = t[(t["quantity"] == "Glx/tNAA") & (t["parameter"] == "slope_per_min")].iloc[0]
        assert row["qc_pass"] and row["n_blocks"] == 6 and row["se"] > 0
        planted = truth["sessions"][path.name.split("_task")[0]]["glx_tnaa_per_minute"]
        covered += row["ci_low"] <= planted <= row["ci_high"]
        fit = pd.read_csv(path.with_name(path.name.replace("mrsdynamic", "mrsfit")), sep="\t")
        glx = fit[fit["metabolite"] == "Glx"].sort_values("block")
        assert np.all(np.isfinite(glx["dynamic_ratio_tNAA"])) and np.all(glx["dynamic_ratio_tNAA_se"] > 0)
        before = glx[glx["block"] < 0]["dynamic_ratio_tNAA"].to_numpy()
        assert before == pytest.approx(np.full(len(before), before[0]), rel=1e-9)  # constant before the onset
    assert covered >= 14  # 95 % intervals: 16 x 0.95 expected, >= 14 unless miscalibrated


def test_group_dynamic_model_recovers_planted_effect_with_a_narrower_interval(cohort_results):
    """Acceptance: on the same data the summary-statistics model of the dynamic fits recovers the planted
    pretreatment x time (right sign, CI covering it) with a narrower CI than the block-wise mixed model."""
    truth, out, _ = cohort_results
    folder = out / "group" / "spectroscopy"
    dyn = pd.read_csv(folder / "desc-fmrsdynamicmodel_stats.tsv", sep="\t")
    bw = pd.read_csv(folder / "desc-fmrslmm_stats.tsv", sep="\t")
    planted = truth["glx_tnaa_per_minute"]["pretreatment_x_time"]
    d = dyn[(dyn["outcome"] == "Glx/tNAA") & (dyn["term"] == "pretreatment_x_time")].iloc[0]
    b = bw[(bw["outcome"] == "Glx/tNAA") & (bw["term"] == "pretreatment_x_time")].iloc[0]
    assert np.sign(d["estimate"]) == np.sign(planted) and d["ci_low"] <= planted <= d["ci_high"]
    assert d["ci_high"] - d["ci_low"] < b["ci_high"] - b["ci_low"]
    time_row = dyn[(dyn["outcome"] == "Glx/tNAA") & (dyn["term"] == "time")].iloc[0]
    assert time_row["ci_low"] <= truth["glx_tnaa_per_minute"]["time"] <= time_row["ci_high"]
    mi = dyn[(dyn["outcome"] == "mI/tNAA") & (dyn["term"] == "pretreatment_x_time")].iloc[0]
    assert mi["ci_low"] <= 0 <= mi["ci_high"]
    assert json.loads((folder / "desc-fmrsdynamicmodel_stats.json").read_text())["Description"].startswith(
        "Dynamic fit")


def test_methods_text_states_the_dynamic_fits_recorded_nuisance_designs(cohort_results):
    """The sidecars record how each session's dynamic fit treated its nuisance parameters (default: phase per
    block, the rest shared), and the methods text says what they recorded."""
    from bids_ketamine.reports.boilerplate import _dynamic_nuisance_text, spectroscopy_record
    from bids_ketamine.reports.collect import OutputFolder

    _, out, _ = cohort_results
    sidecars = sorted(out.glob("sub-*/**/*_mrsdynamic.json"))
    assert sidecars
    for sidecar in sidecars:
        settings = json.loads(sidecar.read_text())["DynamicFit"]["settings"]
        assert (settings["phase"], settings["lineshape"], settings["shift"], settings["baseline"]) == (
            "per_block", "shared", "shared", "shared"), sidecar
    text = _dynamic_nuisance_text(spectroscopy_record(OutputFolder.read(out))["dynamic_nuisance"])
    assert text == "line shape, shift and baseline shared across blocks, zero- and first-order phase free per block"


def test_group_madrs_model(cohort_results):
    _, out, _ = cohort_results
    stats = pd.read_csv(out / "group" / "spectroscopy" / "desc-madrslmm_stats.tsv", sep="\t")
    row = stats[stats["term"] == "pretreatment_x_time"].iloc[0]
    # planted: improvement 12 after placebo, 28 % less after naltrexone -> the score falls 3.36 less
    assert row["ci_low"] <= 12.0 * 0.28 <= row["ci_high"]
    assert row["estimate"] > 0
