"""The table validation layer: each defect is one problem naming the file, the line, the value and the fix, and row
problems belong to their participant (so only that participant is refused)."""

from __future__ import annotations

import pytest

from bids_ketamine.design import StudyDesign, participants_table, sessions_table
from bids_ketamine.errors import EXIT_BAD_DATA, EXIT_MISSING_INPUT, BadDataError, MissingInputError
from bids_ketamine.inputs import AnatInputs, BoldRun, MrsAcquisition, ParticipantInputs
from bids_ketamine.tables import (event_problems, group_level_refusal, participant_level_refusals,
                                  participant_problems, read_table, session_problems)

from .helpers import make_tiny_bids

HEADER = "participant_id\tsite\tsex\tage\tarm\tcohort\tmadrs_baseline\tmadrs_24h\n"


def _participants(tmp_path, *rows: str):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01", "02", "03"))
    (bids / "participants.tsv").write_text(HEADER + "".join(r + "\n" for r in rows))
    return bids


@pytest.mark.parametrize("text, words", [
    ("", ["is empty", "header row"]),
    ("\n\n", ["is empty"]),
    ("participant_id\tage\tage\nsub-01\t3\t4\n", ["'age' twice"]),
    ("participant_id\tage\nsub-01\t30\t4\textra\n", ["line 2 has 4 tab-separated fields, the header 2"]),
    ("participant_id\tage\nsub-01\n", ["line 2 has 1 tab-separated fields"]),
])
def test_malformed_participants_tsv_is_one_line_naming_the_file(tmp_path, text, words):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",))
    (bids / "participants.tsv").write_text(text)
    with pytest.raises(BadDataError) as exc:
        participants_table(bids, StudyDesign())
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(bids / "participants.tsv")) and "Fix:" in message
    assert all(w in message for w in words), message


def test_repeated_participant_names_both_lines(tmp_path):
    bids = _participants(tmp_path, "sub-01\ta\tF\t30\tketamine\tdiscovery\t30\t10",
                         "sub-02\ta\tF\t30\tketamine\tdiscovery\t30\t10",
                         "01\ta\tF\t31\tketamine\tdiscovery\t30\t12")
    with pytest.raises(BadDataError, match=r"line 4 \(sub-01\): sub-01 is listed twice \(also on line 2\)"):
        participants_table(bids, StudyDesign())


def test_header_without_rows_and_missing_id_column(tmp_path):
    bids = _participants(tmp_path)
    with pytest.raises(BadDataError, match="no participant"):
        participants_table(bids, StudyDesign())
    (bids / "participants.tsv").write_text("subject\tage\n01\t30\n")
    with pytest.raises(MissingInputError, match="no participant_id column"):
        participants_table(bids, StudyDesign())


def test_values_outside_their_domain_are_problems_of_their_participant(tmp_path):
    bids = _participants(tmp_path, "sub-01\ta\tF\t30\tketamine\tdiscovery\t-3\t10",
                         "sub-02\ta\tX\t30\tketamin\tdiscovery\t30\t61",
                         "sub-03\ta\tm\t230\tsaline\tn/a\tn/a\t12")
    problems = participant_problems(bids, StudyDesign())
    assert sorted(problems) == ["01", "02", "03"]
    text = {s: [p.text() for p in ps] for s, ps in problems.items()}
    assert text["01"] == ["line 2 (sub-01): madrs_baseline is '-3', outside the range of the MADRS total score "
                          "(0-60)"]
    assert any("sex is 'X', which the design does not know" in t for t in text["02"])
    assert any("arm is 'ketamin'" in t for t in text["02"])
    assert any("madrs_24h is '61'" in t for t in text["02"])
    assert text["03"] == ["line 4 (sub-03): age is '230', outside the range of the age in years (0-120)"]
    assert all(p.fix for ps in problems.values() for p in ps)
    # only the columns an analysis reads: connectivity's group level reads none of these
    assert group_level_refusal(bids, StudyDesign(), "connectivity") is None
    refusal = group_level_refusal(bids, StudyDesign(), "structural")
    assert isinstance(refusal, BadDataError) and "and 4 more" in str(refusal) and "\n" not in str(refusal)
    spectroscopy = group_level_refusal(bids, StudyDesign(), "spectroscopy")
    assert "sex is 'X'" in str(spectroscopy) and "more" not in str(spectroscopy)
    # at the participant level, the same rule: a row defect refuses the analyses that read the column
    refused = participant_level_refusals(bids, StudyDesign(), {s: _inputs(s) for s in ("01", "02", "03")},
                                         ["structural", "connectivity", "spectroscopy"])
    assert set(refused) == {("01", "structural"), ("02", "structural"), ("02", "spectroscopy"),
                            ("03", "structural")}


def test_a_label_the_config_adds_is_accepted(tmp_path):
    bids = _participants(tmp_path, "sub-01\ta\tF\t30\tesketamine\tdiscovery\t30\t10")
    assert participant_problems(bids, StudyDesign())["01"][0].fix.endswith("design.arms in --config-file")
    design = StudyDesign.model_validate({"arms": {"ketamine": ["ketamine", "esketamine"]}})
    assert participant_problems(bids, design) == {}


def test_default_columns_the_file_lacks_are_not_required(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    assert participant_problems(bids, StudyDesign()) == {}
    assert group_level_refusal(bids, StudyDesign(), "structural") is None


def _sessions(bids, subject, text):
    path = bids / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    path.write_text(text)
    return path


def _inputs(subject, bold_sessions=(), mrs_sessions=(), events=None):
    bold = tuple(BoldRun(bold=f"/x/{s}.nii.gz", confounds=f"/x/{s}.tsv", mask=None, space="MNI", session=s, run=None,
                         task="rest", condition=None, repetition_time=2.0) for s in bold_sessions)
    mrs = tuple(MrsAcquisition(svs=f"/x/{s}_svs.nii.gz", references={}, events=events, session=s)
                for s in mrs_sessions)
    return ParticipantInputs(subject=subject, anat=AnatInputs(), bold=bold, mrs=mrs)


def test_sessions_defects_refuse_only_the_analyses_that_need_them(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01", "02", "03"))
    _sessions(bids, "01", "session_id\tcondition\nses-placebo\tplacebo\nses-ketamine\tn/a\n")
    _sessions(bids, "02", "session_id\tcondition\tpretreatment\tperiod\nses-a\tketamine\tnaltrexon\t1\n"
                          "ses-b\tketamine\tplacebo\t2.5\n")
    inputs = {"01": _inputs("01", bold_sessions=("placebo", "ketamine")),
              "02": _inputs("02", mrs_sessions=("a", "b")),
              "03": _inputs("03", bold_sessions=("placebo", "ketamine"))}
    refused = participant_level_refusals(bids, StudyDesign(), inputs, ["connectivity", "spectroscopy"],
                                         blocks=False)
    # a defective sessions.tsv refuses the analyses that read sessions (the orchestrator keeps those that apply)
    assert set(refused) == {("01", "connectivity"), ("02", "connectivity"), ("02", "spectroscopy"),
                            ("03", "connectivity")}
    structural = participant_level_refusals(bids, StudyDesign(), inputs, ["structural"])
    assert structural == {}
    one = str(refused[("01", "connectivity")])
    assert one.startswith(str(bids / "sub-01" / "sub-01_sessions.tsv")) and "line 3" in one
    assert "ses-ketamine has no condition" in one and refused[("01", "connectivity")].exit_code == EXIT_BAD_DATA
    two = str(refused[("02", "spectroscopy")])
    assert "line 2 (sub-02): pretreatment is 'naltrexon'" in two and "(and 1 more: sub-02_sessions.tsv line 3)" in two
    three = refused[("03", "connectivity")]
    assert three.exit_code == EXIT_MISSING_INPUT and "sessions.tsv not found" in str(three)
    assert ("01", "spectroscopy") not in refused  # no MRS: nothing to refuse
    # the group level reads the tables once: the defective values are refused there too
    assert "naltrexon" in str(group_level_refusal(bids, StudyDesign(), "spectroscopy"))


def test_session_table_problems_name_lines(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01",))
    _sessions(bids, "01", "session_id\tcondition\nses-a\tplacebo\nses-a\tketamine\nses/b\tketamine\n")
    _, problems = session_problems(bids, StudyDesign(), "01")
    assert [p.line for p in problems] == [3, 4]
    assert "listed twice" in problems[0].message and "not a BIDS label" in problems[1].message


@pytest.mark.parametrize("text, words", [
    ("onset\tduration\ttrial_type\nabc\t10\tinfusion\n", ["line 2", "onset is 'abc', not a number"]),
    ("onset\tduration\ttrial_type\n-5\t10\tinfusion\n", ["line 2", "onset is '-5', outside"]),
    ("onset\tduration\ttrial_type\nn/a\t10\tinfusion\n", ["onset is n/a"]),
    ("onset\ttrial_type\n10\tinfusion\n", ["no 'duration' column"]),
    ("onset\tduration\ttrial_type\n480\t2400\tinfuse\n", ["no row with trial_type 'infusion'", "infuse"]),
])
def test_event_defects(tmp_path, text, words):
    path = tmp_path / "events.tsv"
    path.write_text(text)
    problems = event_problems(path, StudyDesign())
    assert problems, text
    message = problems[0].text()
    assert all(w in message for w in words), message


def test_good_tables_pass(tmp_path):
    bids = make_tiny_bids(tmp_path / "b", subjects=("01", "02"))
    _sessions(bids, "01", "session_id\tcondition\tpretreatment\tperiod\tmadrs_baseline\tmadrs_24h\n"
                          "ses-a\tKetamine\tplacebo\t1\t30\t12\nses-b\tketamine\tnaltrexone\t2\t31\tn/a\n")
    events = tmp_path / "events.tsv"
    events.write_text("onset\tduration\ttrial_type\n480.0\t2400\tinfusion\n")
    inputs = {"01": _inputs("01", mrs_sessions=("a", "b"), events=events), "02": _inputs("02")}
    assert participant_level_refusals(bids, StudyDesign(), inputs, ["structural", "spectroscopy"]) == {}
    assert participant_problems(bids, StudyDesign()) == {}
    assert len(sessions_table(bids, StudyDesign())) == 2
    assert read_table(events).lines == (2,)
