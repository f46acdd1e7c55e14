"""fMRS block timing from events.tsv, and the group mixed model on planted block-level tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.spectroscopy.group import fit_mixed_model, model_frame
from bids_ketamine.spectroscopy.preprocess import block_averages, fmrs_blocks, infusion_onset


def test_blocks_are_timed_from_tr_and_infusion_onset():
    blocks = fmrs_blocks(n_transients=60, repetition_time=10.0, onset_seconds=120.0, block_seconds=120.0)
    # transient k at 10 k s: 0-110 s before onset (block -1), 120-230 block 0, ...
    assert list(blocks.labels) == [-1, 0, 1, 2, 3]
    assert (blocks.index[:12] == -1).all() and (blocks.index[12:24] == 0).all()
    np.testing.assert_allclose(blocks.start_minutes, [-2, 0, 2, 4, 6])
    x = np.arange(60, dtype=complex)[:, None] * np.ones((1, 8))
    keep = np.ones(60, bool)
    keep[13] = False
    avg, n = block_averages(x, keep, blocks)
    assert n[1] == 11 and avg[1, 0] == pytest.approx(np.mean([k for k in range(12, 24) if k != 13]))


def test_block_shorter_than_tr_is_refused():
    with pytest.raises(BadDataError):
        fmrs_blocks(10, repetition_time=5.0, onset_seconds=0.0, block_seconds=2.0)


def test_infusion_onset_read_and_errors(tmp_path):
    ev = tmp_path / "sub-1_task-infusion_events.tsv"
    ev.write_text("onset\tduration\ttrial_type\n10\t5\tcue\n480.5\t2400\tinfusion\n")
    assert infusion_onset(ev) == 480.5
    with pytest.raises(BadDataError) as exc:
        infusion_onset(ev, "ketamine_start")
    assert "ketamine_start" in str(exc.value) and str(ev) in str(exc.value)
    with pytest.raises(MissingInputError):
        infusion_onset(tmp_path / "absent_events.tsv")


def _planted_table(seed: int, confound_period: bool) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    coef = {"time": 0.005, "pretreatment_x_time": -0.003, "sex_x_time": 0.002, "sex_x_pretreatment_x_time": -0.002}
    rows, ses_rows, parts = [], [], []
    for i in range(16):
        pid = f"s{i:02d}"
        sex = "M" if i % 2 == 0 else "F"
        sc = 0.5 if sex == "M" else -0.5
        parts.append({"participant_id": pid, "sex": sex})
        first = "placebo" if (i % 2 == 0 if confound_period else (i // 2) % 2 == 0) else "naltrexone"
        u = rng.normal(0, 0.03)
        for ses in ("placebo", "naltrexone"):
            nal = 1.0 if ses == "naltrexone" else 0.0
            ses_rows.append({"participant_id": pid, "session_id": ses, "pretreatment": ses,
                             "period": 1 if ses == first else 2})
            v = rng.normal(0, 0.01)
            for b, t in enumerate((2.0, 6.0, 10.0, 14.0)):
                slope = (coef["time"] + coef["pretreatment_x_time"] * nal + coef["sex_x_time"] * sc
                         + coef["sex_x_pretreatment_x_time"] * sc * nal)
                rows.append({"participant_id": pid, "session_id": ses, "block": b, "block_time_min": t,
                             "pretreatment": ses, "value": 1.0 + u + v + slope * t + rng.normal(0, 0.01),
                             "qc_pass": True})
    return pd.DataFrame(rows), pd.DataFrame(parts), pd.DataFrame(ses_rows), coef


@pytest.mark.parametrize("confound_period", [False, True])
def test_mixed_model_recovers_planted_coefficients(confound_period):
    long, parts, sessions, coef = _planted_table(1, confound_period)
    table = fit_mixed_model(model_frame(long, parts, sessions), "Glx/tNAA", time_col="block_time_min")
    est = table.set_index("term")
    for term, value in coef.items():
        assert est.loc[term, "ci_low"] <= value <= est.loc[term, "ci_high"], term
    assert est.loc["pretreatment_x_time", "p"] < 0.05
    # Satterthwaite df (the dynamic model's rule): in this balanced design every session has the same block times,
    # so the slope terms are estimated within sessions and get that stratum's classical df: observations minus
    # sessions minus the four slope terms (not observations minus all fixed effects, as before)
    n_sessions = long[["participant_id", "session_id"]].drop_duplicates().shape[0]
    slope_terms = ["time", "pretreatment_x_time", "sex_x_time", "sex_x_pretreatment_x_time"]
    np.testing.assert_allclose(est.loc[slope_terms, "df"], len(long) - n_sessions - 4, rtol=1e-6)
    assert (table["df"] < len(long) - len(table) + 1e-9).all()
    # a crossover order that is a function of sex x pretreatment cannot be estimated: period is dropped, said so
    assert ("period_2" in est.index) != confound_period
    assert ("C(period)" in table["formula"].iloc[0]) != confound_period
