"""The synthetic study: deterministic for a seed, BIDS-valid, and its ground truth states every planted effect."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from bids_ketamine.synthetic.study import SIZES, write_study


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_study(small_demo, tmp_path_factory):
    """The small study (seed 5) written again here, on the other number of processes than the session's demo wrote
    it with: ``(root, truth returned by write_study, the demo's copy of the same study)``.

    The demo's copy (``small_demo``, shared with the report, scale-out and platform tests) is the reference of the
    determinism test, so the suite writes this study twice, not three times.
    """
    demo_root, code = small_demo
    assert code == 0
    demo_jobs = len(os.sched_getaffinity(0))  # what `bids-ketamine demo` wrote with (no --nprocs)
    root = tmp_path_factory.mktemp("study") / "bids"
    truth = write_study(root, seed=5, size="small", n_jobs=1 if demo_jobs > 1 else 2)
    return root, truth, demo_root / "bids"


def test_same_seed_gives_identical_files_and_another_seed_does_not(small_study, tmp_path):
    """Also on another number of processes (the demo writes on all cores): the T1w images do not depend on who
    writes them."""
    root, _, demo_bids = small_study
    first, second = _digest(root), _digest(demo_bids)
    assert first.keys() == second.keys()
    differing = [k for k in first if first[k] != second[k]]
    assert not differing, f"not byte-identical: {differing[:5]}"
    other = tmp_path / "other"
    write_study(other, seed=12, size="small", parts=("anat",))
    third = _digest(other)
    assert third["participants.tsv"] != first["participants.tsv"]
    t1w = "sub-d001/anat/sub-d001_T1w.nii.gz"
    assert t1w in third and third[t1w] != first[t1w]  # the images themselves follow the seed, not only the tables


def test_cohorts_and_tables(small_study):
    root, *_ = small_study
    spec = SIZES["small"]
    lines = (root / "participants.tsv").read_text().splitlines()
    assert len(lines) - 1 == spec.n_discovery + spec.n_external + spec.n_saline + spec.n_connectivity + spec.n_fmrs
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    external_sites = {r["site"] for r in rows if r["cohort"] == "external"}
    discovery_sites = {r["site"] for r in rows if r["cohort"] == "discovery" and r["arm"] == "ketamine"}
    assert external_sites and not external_sites & discovery_sites, "external cohort must be at unseen sites"
    assert {r["arm"] for r in rows if r["study"] == "structural"} == {"ketamine", "saline"}


def test_ground_truth_states_every_planted_effect(small_study):
    root, truth, _ = small_study
    assert json.loads((root / "code" / "ground_truth.json").read_text()) == json.loads(json.dumps(truth))
    structural = truth["structural"]
    assert 0.5 < structural["bayes_auc_latent"] < 1 and structural["saline_expected_auc"] == 0.5
    assert structural["effect"], "the anatomical writer must state the planted regions"
    subjects = structural["subjects"]
    ket = [s for s in subjects.values() if s["arm"] == "ketamine"]
    assert {s["responder"] for s in ket} == {True, False}
    # responders were given larger latent grey-matter scores (the planted effect)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean([s["gm_effect"] for s in ket if s["responder"]]) > mean([s["gm_effect"] for s in ket
                                                                          if not s["responder"]])
    assert truth["connectivity"]["n_components"] == SIZES["small"].n_components
    madrs = truth["spectroscopy"]["madrs"]
    assert madrs["pretreatment_x_time_score"] > 0 > madrs["improvement_difference_naltrexone_minus_placebo"]
    assert "pretreatment_x_time" in json.dumps(truth["spectroscopy"])


def test_synthetic_study_is_valid_bids(small_study):
    from bids_ketamine.validation import validation_errors

    root, *_ = small_study
    errors = validation_errors(root)
    assert errors == [], errors[:3]
