"""The fMRS fit figure's title, legend and panel titles do not overlap (issue 15: the legend sat on the title).

Checked on the drawn figure's text bounding boxes (what a screenshot would show), with small made-up spectra: the
layout does not depend on the values.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def _result(ppm: np.ndarray, rng: np.random.Generator) -> SimpleNamespace:
    peak = np.exp(-((ppm - 2.0) / 0.03) ** 2)
    return SimpleNamespace(ppm=ppm, data=peak + 0.02 * rng.standard_normal(ppm.size), fit=peak, baseline=0 * ppm,
                           residual=0.02 * rng.standard_normal(ppm.size),
                           group_spectra={"macromolecules": 0.05 * np.exp(-((ppm - 0.9) / 0.1) ** 2)},
                           qc_pass=True, qc_reasons=())


def test_fit_figure_text_does_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    from bids_ketamine.spectroscopy.participant import fit_figure

    ppm, rng = np.linspace(4.2, 0.2, 300), np.random.default_rng(0)
    fig = fit_figure([_result(ppm, rng) for _ in range(3)], ["block -2 (-6.0 min)", "block -1", "block 0"],
                     "sub-01_ses-placebo_task-infusion_svs.nii.gz")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {"title": fig._suptitle.get_window_extent(renderer), "legend": fig.legends[0].get_window_extent(renderer)}
    boxes.update({f"panel {i}": ax.title.get_window_extent(renderer) for i, ax in enumerate(fig.axes)})
    names = list(boxes)
    overlapping = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]
    assert overlapping == []
