"""The study design: standardised tables, response rule, config files in three formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_ketamine.config import design_from_file, read_config_file
from bids_ketamine.design import StudyDesign, participants_table, sessions_table
from bids_ketamine.errors import BadDataError, MissingInputError, UsageError

from .helpers import make_tiny_bids


def test_response_rule_is_at_least_half_the_baseline(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",))
    (bids / "participants.tsv").write_text(
        "participant_id\tsite\tsex\tage\tarm\tcohort\tmadrs_baseline\tmadrs_24h\n"
        "sub-01\ta\tf\t30\tketamine\tdiscovery\t30\t15\n"
        "sub-02\ta\tMale\t31\tKetamine\texternal\t30\t16\n"
        "sub-03\tb\tF\tn/a\tsaline\tdiscovery\tn/a\t10\n")
    table = participants_table(bids, StudyDesign())
    assert table["participant_id"].tolist() == ["01", "02", "03"]
    assert table["outcome"].tolist()[:2] == [1.0, 0.0] and np.isnan(table["outcome"][2])
    assert table["sex"].tolist() == ["F", "M", "F"]
    assert table["arm"].tolist() == ["ketamine", "ketamine", "saline"]
    assert table["cohort"].tolist() == ["discovery", "external", "discovery"]
    assert np.isnan(table["age"][2])


def test_madrs_from_a_phenotype_file(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01", "02"))
    (bids / "phenotype").mkdir()
    (bids / "phenotype" / "madrs.tsv").write_text("participant_id\tm0\tm1\nsub-01\t40\t10\nsub-02\t40\t30\n")
    design = StudyDesign.model_validate({"madrs": {"file": "phenotype/madrs.tsv", "baseline": "m0",
                                                   "followup": "m1"}})
    assert participants_table(bids, design)["outcome"].tolist() == [1.0, 0.0]


def test_non_numeric_madrs_is_bad_data(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",), extra_columns={"madrs_24h": "ten"})
    with pytest.raises(BadDataError, match="'ten'"):
        participants_table(bids, StudyDesign())


def test_column_outcome_rule_needs_positive_values(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",), extra_columns={"group": "depr"})
    design = StudyDesign.model_validate({"response": {"kind": "column", "column": "group"}})
    with pytest.raises(MissingInputError, match="positive"):
        participants_table(bids, design)


@pytest.mark.realdata
def test_ds002748_group_column_as_outcome(shared_data):
    design = StudyDesign.model_validate({
        "participants": {"site": None, "sex": "gender", "arm": None, "cohort": None},
        "response": {"kind": "column", "column": "group", "positive": ["depr"]}})
    table = participants_table(shared_data / "ds002748_t1w", design)
    assert len(table) == 24
    assert table["outcome"].value_counts().to_dict() == {1.0: 12, 0.0: 12}
    assert set(table["sex"]) == {"F", "M"} and (table["arm"] == "ketamine").all()
    assert table["age"].between(18, 80).all()


def test_sessions_table(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",))
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text(
        "session_id\tcondition\tpretreatment\tperiod\tmadrs_baseline\tmadrs_24h\n"
        "ses-a\tKetamine\tnaltrexone\t2\t30\t20\nses-b\tketamine\tplacebo\t1\t31\t11\n")
    table = sessions_table(bids, StudyDesign())
    assert table["session_id"].tolist() == ["a", "b"]
    assert table["condition"].tolist() == ["ketamine", "ketamine"]
    assert table["pretreatment"].tolist() == ["naltrexone", "placebo"]
    assert table["period"].tolist() == [2.0, 1.0]


def test_three_config_formats_give_the_same_design(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('random_seed = 3\n[design.participants]\nsite = "scanner"\n[design.fmrs]\nblock_seconds = 120\n')
    yaml = tmp_path / "c.yaml"
    yaml.write_text("random_seed: 3\ndesign:\n  participants: {site: scanner}\n  fmrs: {block_seconds: 120}\n")
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"random_seed": 3, "design": {"participants": {"site": "scanner"},
                                                           "fmrs": {"block_seconds": 120}}}))
    designs = [design_from_file(read_config_file(p), p) for p in (toml, yaml, js)]
    assert designs[0] == designs[1] == designs[2]
    assert designs[0].participants.site == "scanner" and designs[0].fmrs.block_seconds == 120


def test_config_errors_name_field_file_and_fix(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text('[design.fmrs]\nblock_seconds = -5\n')
    with pytest.raises(UsageError) as err:
        design_from_file(read_config_file(bad), bad)
    assert "design.fmrs.block_seconds" in str(err.value) and "c.toml" in str(err.value) and "Fix:" in str(err.value)
    unknown = tmp_path / "u.toml"
    unknown.write_text('[tractography]\nx = 1\n')
    with pytest.raises(UsageError, match="unknown section 'tractography'"):
        read_config_file(unknown)


def test_readme_config_for_ds002748_parses(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    config = tmp_path / "ds002748.toml"
    config.write_text(block)
    data = read_config_file(config)
    design = design_from_file(data, config)
    assert design.participants.site is None and design.participants.sex == "gender"
    assert design.response.column == "group" and data["random_seed"] == 1


def test_default_design_columns_the_data_lack_are_optional_but_named_ones_are_required(tmp_path):
    """A participants.tsv with only participant_id (spectroscopy-only data, imported maps) needs no config file;
    a column the user names in the config that the file lacks is still an error naming the field."""
    bids = make_tiny_bids(tmp_path / "b", subjects=("01", "02"))
    (bids / "participants.tsv").write_text("participant_id\tsex\nsub-01\tf\nsub-02\tm\n")
    table = participants_table(bids, StudyDesign())
    assert table["participant_id"].tolist() == ["01", "02"]
    assert table["site"].tolist() == ["site1", "site1"] and table["sex"].tolist() == ["F", "M"]
    assert table["arm"].tolist() == ["ketamine", "ketamine"] and table["cohort"].tolist() == ["discovery"] * 2
    assert table["age"].isna().all()
    named = StudyDesign.model_validate({"participants": {"age": "age_years"}})
    with pytest.raises(MissingInputError, match=r"'age_years' \(config field design.participants.age\)"):
        participants_table(bids, named)
