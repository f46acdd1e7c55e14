"""The design's outcome wording reaches the figure and the methods text (issue 14 item 5): a study whose outcome
is a column (depression vs control in ds002748) is never reported as "response" or "responders"."""

from __future__ import annotations

import numpy as np

from bids_ketamine.reports.boilerplate import _Lookup, _structural_text
from bids_ketamine.structural.figures import confusion_figure

COLUMN_DESIGN = {"response": {"kind": "column", "column": "group", "positive": ["depr"]}}
MADRS_DESIGN = {"response": {"kind": "madrs", "min_reduction": 0.5}}


def tick_texts(fig) -> list[str]:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]


def test_confusion_figure_names_the_design_classes():
    labels, scores = np.array([0, 0, 1, 1]), np.array([-1.0, 1.0, -1.0, 1.0])
    fig = confusion_figure(labels, scores, title="discovery", positive="group = depr",
                           negative="group other than depr")
    texts = tick_texts(fig)
    assert texts == ["predicted group other than depr", "predicted group = depr", "group other than depr",
                     "group = depr"]
    assert not any("respon" in t for t in texts)


def test_methods_text_of_a_column_outcome_never_says_response():
    text = " ".join(_structural_text(_Lookup({"structural.n_permutations": 1000}), COLUMN_DESIGN, True))
    assert "respon" not in text.lower()
    assert "column 'group' with positive value(s) depr" in text
    assert "towards group = depr" in text
    madrs = " ".join(_structural_text(_Lookup({}), MADRS_DESIGN, True))
    assert "Response was defined as a reduction of the MADRS score by at least 50 %" in madrs


def test_model_card_intended_use_says_pre_treatment_only_for_a_response_model():
    from types import SimpleNamespace

    from bids_ketamine.structural.card import intended_use
    from bids_ketamine.structural.wording import outcome_wording

    column = SimpleNamespace(response=SimpleNamespace(kind="column", column="group", positive=["depr"]))
    text = intended_use(outcome_wording(column), voxelwise=False)
    assert "pre-treatment" not in text and "respon" not in text.lower()
    assert text.endswith("from regional grey-matter volumes of a T1w image.")
    response = intended_use(outcome_wording(None), voxelwise=True)
    assert response.endswith("from voxel-wise modulated grey matter of a pre-treatment T1w image.")
    assert "ketamine response (MADRS reduced by >= 50 % at 24 h)" in response
