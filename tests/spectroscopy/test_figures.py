"""Spectroscopy figures: the voxel outline sits where the header puts it (oblique included), the time courses show
one point per block at the right time with the right error bars, and the files are named so the reports find them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from bids_ketamine.design import StudyDesign
from bids_ketamine.inputs import AnatInputs, MrsAcquisition, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.reports.sections import match_rule
from bids_ketamine.spectroscopy import figures, group, participant
from bids_ketamine.spectroscopy.nifti_io import make_nifti_mrs
from bids_ketamine.spectroscopy.params import SpectroscopyParams
from bids_ketamine.synthetic.mrs import write_synthetic_fmrs_cohort


def _affine(rotation_deg=(0.0, 0.0, 0.0), size=(20.0, 16.0, 10.0), centre=(10.0, -30.0, 5.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix() @ np.diag(size)
    a[:3, 3] = centre
    return a


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _inside_area(affine: np.ndarray, axis: int, position: float, step: float = 0.1) -> float:
    """Area of the voxel's cut by a world plane, counted on a fine grid with the point-in-voxel test."""
    h_axis, v_axis = [i for i in range(3) if i != axis]
    c = affine[:3, 3]
    g = np.arange(-25, 25, step) + step / 2
    hh, vv = np.meshgrid(c[h_axis] + g, c[v_axis] + g, indexing="ij")
    world = np.zeros(hh.shape + (3,))
    world[..., axis], world[..., h_axis], world[..., v_axis] = position, hh, vv
    inv = np.linalg.inv(affine)
    idx = world @ inv[:3, :3].T + inv[:3, 3]
    return float(np.all(np.abs(idx) <= 0.5, axis=-1).sum() * step * step)


# ------------------------------------------------------------------------------------------- geometry
def test_axis_aligned_voxel_cuts_are_its_rectangles():
    a = _affine()
    expected = {2: [(0, -38), (20, -38), (20, -22), (0, -22)],  # axial: x, y
                1: [(0, 0), (20, 0), (20, 10), (0, 10)],  # coronal: x, z
                0: [(-38, 0), (-22, 0), (-22, 10), (-38, 10)]}  # sagittal: y, z
    for axis, corners in expected.items():
        cut = figures.voxel_section(a, axis, a[axis, 3])
        assert sorted(map(tuple, np.round(cut, 9))) == sorted(corners), axis
    assert figures.voxel_size(a) == pytest.approx([20, 16, 10])
    assert figures.voxel_section(a, 2, 5 + 5.01).shape == (0, 2)  # the plane misses the voxel


def test_oblique_voxel_cut_matches_the_rotated_box():
    a = _affine(rotation_deg=(0, 0, 30))
    cut = figures.voxel_section(a, 2, 5.0)
    rot = Rotation.from_euler("z", 30, degrees=True).as_matrix()[:2, :2]
    corners = np.array([[sx * 10, sy * 8] for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]) @ rot.T + [10, -30]
    assert sorted(map(tuple, np.round(cut, 6))) == sorted(map(tuple, np.round(corners, 6)))
    # a voxel tilted about two axes: every vertex lies on the voxel surface and in the plane, and the polygon has
    # the area that a fine point-in-voxel grid counts (for several planes, not only through the centre)
    b = _affine(rotation_deg=(25, -15, 40), size=(22, 18, 14), centre=(-4.0, 40.0, 12.0))
    inv = np.linalg.inv(b)
    for axis in range(3):
        for offset in (0.0, 3.0, -5.0):
            position = b[axis, 3] + offset
            cut = figures.voxel_section(b, axis, position)
            assert 4 <= len(cut) <= 6
            h_axis, v_axis = [i for i in range(3) if i != axis]
            world = np.zeros((len(cut), 3))
            world[:, axis], world[:, h_axis], world[:, v_axis] = position, cut[:, 0], cut[:, 1]
            idx = world @ inv[:3, :3].T + inv[:3, 3]
            assert np.abs(idx).max(axis=1) == pytest.approx(np.full(len(cut), 0.5), abs=1e-9)
            assert _polygon_area(cut) == pytest.approx(_inside_area(b, axis, position), rel=0.01)


def _t1w_with_cube(centre, *, oblique: bool):
    """A T1w (1.5 mm, optionally oblique grid) that is bright in a 16 mm cube around ``centre`` (world mm)."""
    aff = np.eye(4)
    aff[:3, :3] = (Rotation.from_euler("y", 12, degrees=True).as_matrix() if oblique else np.eye(3)) * 1.5
    shape = (80, 90, 70)
    aff[:3, 3] = np.asarray(centre) - aff[:3, :3] @ (np.array(shape) / 2 - [5, -4, 3])
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ aff[:3, :3].T + aff[:3, 3]
    data = np.where(np.all(np.abs(world - centre) <= 8, axis=-1), 1000.0, 100.0).astype(np.float32)
    return data, aff


@pytest.mark.parametrize("oblique", [False, True])
def test_voxel_figure_draws_the_box_at_the_planted_position(oblique):
    centre = (12.0, -25.0, 18.0)
    mrs = _affine(rotation_deg=(0, 20, 35) if oblique else (0, 0, 0), size=(16, 16, 16), centre=centre)
    t1w, t1w_aff = _t1w_with_cube(centre, oblique=oblique)
    fig = figures.voxel_figure(t1w, t1w_aff, mrs, title="planted")
    try:
        assert len(fig.axes) == 3
        for ax, (name, axis, h_axis, v_axis) in zip(fig.axes, figures.VIEWS):
            lines = [ln for ln in ax.get_lines() if ln.get_gid() == figures.VOXEL_GID]
            assert len(lines) == 1, name
            drawn = np.column_stack(lines[0].get_data())
            expected = figures.voxel_section(mrs, axis, centre[axis])
            assert np.allclose(drawn[:-1], expected) and np.allclose(drawn[0], drawn[-1]), name  # closed outline
            assert expected[:, 0].mean() == pytest.approx(centre[h_axis], abs=1e-6)
            assert expected[:, 1].mean() == pytest.approx(centre[v_axis], abs=1e-6)
            # the slice under the outline is the planted bright cube, and it is dark 30 mm away
            image = ax.images[0]
            h0, h1, v0, v1 = image.get_extent()
            plane = np.asarray(image.get_array()).T  # indexed [h, v]

            def value(h, v):
                i = int((h - h0) / (h1 - h0) * plane.shape[0])
                j = int((v - v0) / (v1 - v0) * plane.shape[1])
                return plane[i, j]

            assert value(centre[h_axis], centre[v_axis]) == pytest.approx(1000, rel=0.01), name
            assert value(centre[h_axis] + 30, centre[v_axis]) == pytest.approx(100, rel=0.01), name
        assert "16.0 x 16.0 x 16.0 mm at (12.0, -25.0, 18.0)" in fig._suptitle.get_text()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _write_svs(path: Path, affine: np.ndarray | None, *, code: int = 1) -> Path:
    img = make_nifti_mrs(np.ones((64, 2), complex), dwell_time=2.5e-4, spectrometer_frequency=123.2,
                         dim_tags=("DIM_DYN",))
    header = img.header
    header.set_qform(None, code=0)
    header.set_sform(np.eye(4) if affine is None else affine, code=0 if affine is None else code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti2Image(np.asanyarray(img.dataobj), None, header), str(path))
    return path


def test_voxel_figure_from_files_only_where_the_header_allows(tmp_path):
    centre = (12.0, -25.0, 18.0)
    data, aff = _t1w_with_cube(centre, oblique=False)
    same = tmp_path / "sub-1_ses-b_T1w.nii.gz"
    other = tmp_path / "sub-1_ses-a_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), str(same))
    shifted = aff.copy()
    shifted[:3, 3] += 500  # another session's scanner space: the voxel is nowhere near it
    nib.save(nib.Nifti1Image(data, shifted), str(other))
    svs = _write_svs(tmp_path / "svs.nii.gz", _affine(size=(16, 16, 16), centre=centre))

    fig, note = figures.voxel_figure_from_files(svs, [other, same], session="b", title="svs")
    assert fig is not None and note == f"voxel drawn on {same.name}"
    fig, note = figures.voxel_figure_from_files(svs, [other, same], session="a")
    assert fig is None and "outside sub-1_ses-a_T1w.nii.gz" in note
    assert figures.pick_t1w([Path("s/ses-10/anat/s_ses-10_T1w.nii"), Path("s/ses-1/anat/s_ses-1_T1w.nii")], "1") \
        == Path("s/ses-1/anat/s_ses-1_T1w.nii")
    fig, note = figures.voxel_figure_from_files(svs, [same], session="c")  # no T1w of this session: the other one
    assert fig is not None and note == f"voxel drawn on {same.name} (not this session's T1w: right only if the head " \
                                       "did not move)"
    fig, note = figures.voxel_figure_from_files(svs, [], session="b")
    assert fig is None and note == "no voxel figure: the participant has no T1w"
    no_position = _write_svs(tmp_path / "nopos.nii.gz", None)
    fig, note = figures.voxel_figure_from_files(no_position, [same], session="b")
    assert fig is None and "qform and sform codes are 0" in note
    broken = tmp_path / "sub-1_ses-b_acq-x_T1w.nii.gz"
    broken.write_bytes(same.read_bytes()[:300])
    fig, note = figures.voxel_figure_from_files(svs, [broken], session="b")
    assert fig is None and "cannot be read" in note


# ------------------------------------------------------------------------------------------- time courses
def _fits(blocks=(-1, 0, 1, 2), sessions=(("1", "placebo"), ("2", "naltrexone"))) -> pd.DataFrame:
    rows = []
    for k, (ses, pre) in enumerate(sessions):
        for b in blocks:
            for met, conc, crlb in (("Glx", 10.0 + b + k, 0.5 + 0.1 * b), ("tNAA", 12.0, 0.3)):
                rows.append({"participant_id": "01", "session_id": ses, "pretreatment": pre, "block": b,
                             "block_start_min": 4.0 * b, "block_time_min": 4.0 * b + 2.0 + 0.1 * k,
                             "metabolite": met, "concentration": conc, "crlb": crlb,
                             "qc_pass": not (ses == "2" and b == 2)})
    return pd.DataFrame(rows)


def test_participant_timecourse_has_one_point_per_block_at_its_time():
    fits = _fits()
    fig = figures.participant_timecourse_figure(fits, "Glx", "tNAA")
    try:
        ax = fig.axes[0]
        for k, (ses, pre) in enumerate((("1", "placebo"), ("2", "naltrexone"))):
            container = next(c for c in ax.containers if c.lines[0].get_gid() == f"timecourse-ses-{ses}")
            x, y = container.lines[0].get_data()
            assert list(x) == pytest.approx([4.0 * b + 2.0 + 0.1 * k for b in (-1, 0, 1, 2)])
            glx = np.array([10.0 + b + k for b in (-1, 0, 1, 2)])
            assert list(y) == pytest.approx(list(glx / 12.0))
            # CRLB error bars: r * sqrt((sd_G / G)^2 + (sd_N / N)^2)
            crlb = np.array([0.5 + 0.1 * b for b in (-1, 0, 1, 2)])
            sd = glx / 12 * np.sqrt((crlb / glx) ** 2 + (0.3 / 12) ** 2)
            segments = container.lines[2][0].get_segments()
            assert [s[1, 1] - s[0, 1] for s in segments] == pytest.approx(list(2 * sd))
            assert container.get_label() == f"ses-{ses} ({pre})"
        hollow = [ln for ln in ax.get_lines() if ln.get_label().endswith("failed QC")]
        assert len(hollow) == 1 and list(hollow[0].get_xdata()) == pytest.approx([10.1])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    with pytest.raises(ValueError, match="no timed fMRS block"):
        figures.participant_timecourse_figure(_fits().assign(block_time_min=np.nan))


def test_group_timecourse_shows_means_with_t_confidence_intervals():
    rng = np.random.default_rng(4)
    rows = []
    for s in range(6):
        for pre in ("placebo", "naltrexone"):
            for b in range(3):
                rows.append({"participant_id": f"s{s}", "session_id": pre, "pretreatment": pre, "block": b,
                             "block_time_min": 4.0 * b + 2 + 0.05 * s, "value": 1.0 + 0.1 * b + rng.normal(0, 0.05),
                             "qc_pass": not (s == 0 and b == 1), "sex_c": 0.5 if s % 2 else -0.5})
    frame = pd.DataFrame(rows)
    fig = figures.group_timecourse_figure(frame, "Glx/tNAA")
    try:
        assert len(fig.axes) == 3  # all, F, M
        container = next(c for c in fig.axes[0].containers if c.lines[0].get_gid() == "group-all-naltrexone")
        x, y = container.lines[0].get_data()
        sel = frame[(frame["pretreatment"] == "naltrexone") & frame["qc_pass"]]
        for b in range(3):
            v = sel[sel["block"] == b]["value"].to_numpy()
            half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
            seg = container.lines[2][0].get_segments()[b]
            assert x[b] == pytest.approx(sel[sel["block"] == b]["block_time_min"].mean())
            assert y[b] == pytest.approx(v.mean())
            assert (seg[0, 1], seg[1, 1]) == pytest.approx((v.mean() - half, v.mean() + half))
        assert sel[sel["block"] == 1].shape[0] == 5  # the QC-failed block is left out, as in the model
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_madrs_change_figure_means_and_cis():
    rng = np.random.default_rng(5)
    rows = []
    for s in range(8):
        for pre, gain in (("placebo", 12.0), ("naltrexone", 8.6)):
            base = float(rng.normal(30, 4))
            rows += [{"participant_id": f"s{s}", "session_id": pre, "pretreatment": pre, "time": 0.0, "value": base},
                     {"participant_id": f"s{s}", "session_id": pre, "pretreatment": pre, "time": 1.0,
                      "value": base - gain + float(rng.normal(0, 2))}]
    mad = pd.DataFrame(rows)
    summary = figures.madrs_summary(mad)
    for pre in ("placebo", "naltrexone"):
        part = mad[mad["pretreatment"] == pre].pivot(index="participant_id", columns="time", values="value")
        change = (part[1.0] - part[0.0]).to_numpy()
        row = summary[(summary["pretreatment"] == pre) & (summary["measure"] == "change")].iloc[0]
        low, high = stats.t.interval(0.95, change.size - 1, loc=change.mean(), scale=stats.sem(change))
        assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == pytest.approx((change.mean(), low, high, 8))
    fig = figures.madrs_change_figure(mad)
    try:
        left, right = fig.axes
        for pre in ("placebo", "naltrexone"):
            c = next(c for c in left.containers if c.lines[0].get_gid() == f"madrs-{pre}")
            means = summary[(summary["pretreatment"] == pre) & (summary["measure"] != "change")]["mean"]
            assert list(c.lines[0].get_ydata()) == pytest.approx(list(means))
            c = next(c for c in right.containers if c.lines[0].get_gid() == f"madrs-change-{pre}")
            row = summary[(summary["pretreatment"] == pre) & (summary["measure"] == "change")].iloc[0]
            seg = c.lines[2][0].get_segments()[0]
            assert (seg[0, 1], seg[1, 1]) == pytest.approx((row["ci_low"], row["ci_high"]))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


# ------------------------------------------------------------------------------------------- wiring and names
def test_participant_writes_voxel_fit_and_timecourse_figures_the_report_finds(tmp_path, monkeypatch,
                                                                                bids_ketamine_log):
    root = tmp_path / "bids"
    write_synthetic_fmrs_cohort(root, {"w1": "F"}, {"placebo": "placebo"}, seed=2, n_transients=24, n_coils=2,
                                n_points=512)
    folder = root / "sub-w1" / "ses-placebo" / "mrs"
    stem = "sub-w1_ses-placebo_task-infusion"
    centre = (5.0, 30.0, 10.0)
    svs = folder / f"{stem}_svs.nii.gz"
    img = nib.load(str(svs))
    img.header.set_sform(_affine(rotation_deg=(20, 0, 0), size=(20, 20, 20), centre=centre), code=1)
    nib.save(nib.Nifti2Image(np.asanyarray(img.dataobj), None, img.header), str(svs))
    t1w = root / "sub-w1" / "ses-placebo" / "anat" / "sub-w1_ses-placebo_T1w.nii.gz"
    t1w.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(*_t1w_with_cube(centre, oblique=True)), str(t1w))
    acq = MrsAcquisition(svs=svs, references={"water": folder / f"{stem}_mrsref.nii.gz"},
                         events=folder / f"{stem}_events.tsv", session="placebo", task="infusion",
                         pretreatment="placebo", condition="ketamine")
    inputs = ParticipantInputs(subject="w1", anat=AnatInputs(t1w=(t1w,)), mrs=(acq,))
    writer = DerivativesWriter(tmp_path / "out")
    monkeypatch.setenv("BIDS_KETAMINE_PROGRESS", "log")  # as in a batch job: a few log lines, no bar
    with bids_ketamine_log() as records, writer.staged("w1", "spectroscopy") as staged:
        participant.run_participant(inputs, params=SpectroscopyParams(), design=StudyDesign(), writer=staged,
                                    work_dir=tmp_path, seed=0)
    fits = [r for r in records if "fMRS fits" in r]
    assert fits[0] == "sub-w1 fMRS fits: started (6 fits)" and fits[-1].startswith("sub-w1 fMRS fits: done, 6 fits")
    assert len(fits) <= 3  # no line per fit
    assert f"sub-w1 | spectroscopy | fitting 6 spectra of {svs.name}" in records
    out = tmp_path / "out"
    expected = {f"sub-w1/figures/{stem}_desc-voxel_mrs.svg": "voxel",
                f"sub-w1/figures/{stem}_desc-fit_mrs.svg": "fit",
                "sub-w1/figures/sub-w1_desc-glxtimecourse_mrs.svg": "timecourse",
                # the dynamic fit's time course with its band (default time_fit 'dynamic')
                "sub-w1/figures/sub-w1_desc-glxdynamic_mrs.svg": "timecourse"}
    for rel, key in expected.items():
        assert (out / rel).stat().st_size > 5000, rel
        assert match_rule("participant", "spectroscopy", "figure", rel).key == key, rel
    sidecar = json.loads(next(out.glob("sub-w1/ses-placebo/mrs/*_mrsfit.json")).read_text())
    assert sidecar["VoxelFigure"] == f"voxel drawn on {t1w.name}"
    svg = (out / f"sub-w1/figures/{stem}_desc-voxel_mrs.svg").read_text()
    assert f'id="{figures.VOXEL_GID}"' in svg


def _fit_rows(subject: str, ses: str, pre: str, slope: float) -> pd.DataFrame:
    rows = []
    for b in range(-1, 4):
        for met, conc in (("Glx", 10 + slope * b), ("mI", 6 - slope * b), ("MM20", 4.0 + 0.1 * b), ("tNAA", 12.0)):
            rows.append({"participant_id": subject, "session_id": ses, "pretreatment": pre, "block": b,
                         "block_start_min": 4.0 * b, "block_time_min": 4.0 * b + 2, "n_transients": 16,
                         "metabolite": met, "concentration": conc, "crlb": 0.3, "crlb_percent": 3.0,
                         "qc_pass": True})
    return pd.DataFrame(rows)


def _group_inputs(out: Path):
    sessions = []
    for i in range(4):
        sub = f"g{i}"
        for ses, pre, slope in (("a", "placebo", 0.2 + 0.01 * i), ("b", "naltrexone", 0.05 + 0.01 * i)):
            folder = out / f"sub-{sub}" / f"ses-{ses}" / "mrs"
            folder.mkdir(parents=True, exist_ok=True)
            _fit_rows(sub, ses, pre, slope).to_csv(folder / f"sub-{sub}_ses-{ses}_mrsfit.tsv", sep="\t",
                                                   index=False)
            sessions.append({"participant_id": sub, "session_id": ses, "pretreatment": pre, "period": 1 + (ses == "b"),
                             "madrs_baseline": 30.0 + i, "madrs_24h": 20.0 + i + (3 if pre == "naltrexone" else 0)})
    participants = pd.DataFrame({"participant_id": [f"g{i}" for i in range(4)], "sex": ["F", "M", "F", "M"]})
    return participants, pd.DataFrame(sessions)


def test_group_writes_timecourse_and_madrs_figures_the_report_finds(tmp_path):
    out = tmp_path / "out"
    participants, sessions = _group_inputs(out)
    writer = DerivativesWriter(out)
    group.run_group(out, participants=participants, sessions=sessions, params=SpectroscopyParams(),
                    design=StudyDesign(), writer=writer, work_dir=tmp_path, seed=0)
    expected = {"group/figures/desc-glxtimecourse_mrs.svg": "group-timecourse",
                "group/figures/desc-madrschange_mrs.svg": "madrs"}
    for rel, key in expected.items():
        assert (out / rel).stat().st_size > 5000, rel
        assert match_rule("group", "spectroscopy", "figure", rel).key == key, rel


def test_group_models_metabolites_only_by_default(tmp_path):
    """Glx/tNAA first, then every other metabolite; the macromolecule component MM20 is not an outcome."""
    out = tmp_path / "out"
    participants, sessions = _group_inputs(out)
    group.run_group(out, participants=participants, sessions=sessions, params=SpectroscopyParams(figures=False),
                    design=StudyDesign(), writer=DerivativesWriter(out), work_dir=tmp_path, seed=0)
    table = pd.read_csv(out / "group" / "spectroscopy" / "desc-fmrslmm_stats.tsv", sep="\t")
    assert list(dict.fromkeys(table["outcome"])) == ["Glx/tNAA", "mI/tNAA"]


def test_group_timecourse_figure_is_named_after_the_metabolite_drawn(tmp_path):
    out = tmp_path / "out"
    participants, sessions = _group_inputs(out)
    group.run_group(out, participants=participants, sessions=sessions,
                    params=SpectroscopyParams(group_metabolites=("mI", "Glx")), design=StudyDesign(),
                    writer=DerivativesWriter(out), work_dir=tmp_path, seed=0)
    names = sorted(p.name for p in (out / "group" / "figures").glob("*timecourse*"))
    assert names == ["desc-mitimecourse_mrs.svg"]
    assert match_rule("group", "spectroscopy", "figure", f"group/figures/{names[0]}").key == "group-timecourse"


def test_group_plotting_failure_leaves_no_partial_outputs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    participants, sessions = _group_inputs(out)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(figures, "madrs_change_figure", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        group.run_group(out, participants=participants, sessions=sessions, params=SpectroscopyParams(),
                        design=StudyDesign(), writer=DerivativesWriter(out), work_dir=tmp_path, seed=0)
    assert not (out / "group").exists()
