"""What a run does at each level, between the CLI and the analyses: validate, discover, plan, execute, summarise."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from bids_ketamine.__about__ import __version__
from bids_ketamine.analyses import ANALYSES
from bids_ketamine.errors import (EXIT_CANNOT_CREATE_OUTPUT, EXIT_OK, EXIT_PARTICIPANT_FAILED, BidsKetamineError,
                                  CannotCreateOutputError, NoMatchError, NotBuiltError, TemporaryFailure, UsageError)

LOG = logging.getLogger("bids_ketamine")
INVENTORY_COLUMNS = {"analysis": "analysis name", "runs": "whether the analysis runs for this participant",
                     "detail": "inputs used, or what is missing and why"}


def container_info() -> dict[str, str]:
    """Container provenance when running inside our image (the Dockerfile sets these variables)."""
    image = os.environ.get("BIDS_KETAMINE_CONTAINER_IMAGE")
    return {"Type": os.environ.get("BIDS_KETAMINE_CONTAINER_TYPE", "docker"), "Tag": image} if image else {}


def _writer(cfg, derivatives: dict[str, Path]):
    from bids_ketamine.io.derivatives import DerivativesWriter

    links = {"raw": cfg.bids_dir, **derivatives}
    writer = DerivativesWriter(cfg.output_dir, dataset_links=links, container=container_info())
    writer.init_dataset()
    return writer


def _validate(cfg) -> None:
    if cfg.skip_bids_validation:
        LOG.info("BIDS validation skipped (--skip-bids-validation)")
        return
    from bids_ketamine.validation import validate_dataset

    LOG.info("validating %s with bids-validator-deno", cfg.bids_dir)
    validate_dataset(cfg.bids_dir)


def record_run(cfg, writer, extra: dict[str, Any]) -> Path:
    """Write the run's configuration and environment into the output folder (logs/), for provenance."""
    import json
    import time

    from bids_ketamine.io.derivatives import atomic_write_text, dumps_json

    from bids_ketamine.reports.boilerplate import software_versions

    record = {"version": __version__, "level": cfg.level, "config": cfg.as_record(), "software": software_versions(),
              "python": sys.version.split()[0], "platform": platform.platform(), **extra}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = cfg.output_dir / "logs" / f"run-{stamp}_{cfg.level}_pid{os.getpid()}.json"
    atomic_write_text(path, dumps_json(json.loads(json.dumps(record, default=str))))
    return path


def discover(cfg):
    """Layout, selected subjects, standardised tables and per-participant inputs."""
    from bids_ketamine.design import participants_table, sessions_table
    from bids_ketamine.discovery import build_layout, collect_inputs, find_derivatives, select_subjects

    derivatives = find_derivatives(cfg.bids_dir, cfg.derivatives, cfg.output_dir)
    layout = build_layout(cfg.bids_dir, derivatives, cfg.bids_database_dir)
    subjects = select_subjects(layout, cfg.participant_label)
    from bids_ketamine.errors import BadDataError
    from bids_ketamine.tables import participant_problems, session_subjects_ok

    participants = None
    if (cfg.bids_dir / "participants.tsv").exists():
        try:
            participants = participants_table(cfg.bids_dir, cfg.design)
        except BadDataError:
            if not participant_problems(cfg.bids_dir, cfg.design):
                raise
            # a defect in some rows: those participants are refused (table_refusals); no analysis reads phenotypes
    # a participant whose sessions.tsv is defective is refused by table_refusals; the others' tables are read
    sessions = sessions_table(cfg.bids_dir, cfg.design, session_subjects_ok(cfg.bids_dir, cfg.design, subjects))
    phenotypes: dict[str, dict[str, str]] = {}
    if participants is not None:
        phenotypes = {row["participant_id"]: {k: str(v) for k, v in row.items()}
                      for row in participants.to_dict("records")}
    inputs = collect_inputs(layout, subjects, derivatives=derivatives, sessions=cfg.session_label,
                            task=cfg.task_id, filters=cfg.bids_filters, sessions_table=sessions, phenotypes=phenotypes)
    return derivatives, subjects, participants, sessions, inputs


def plan_table(cfg, inputs: dict) -> pd.DataFrame:
    """One row per participant x analysis: will it run, and what it uses or what is missing and why."""
    rows = []
    for name in cfg.analyses or list(ANALYSES):
        analysis = ANALYSES[name]
        try:
            module = analysis.module("participant")
            params = cfg.params(name)
        except NotBuiltError as exc:
            for subject in inputs:
                rows.append({"participant": subject, "analysis": name, "runs": False, "detail": exc.problem})
            continue
        for subject, record in inputs.items():
            runs, detail = module.plan(record, params)
            rows.append({"participant": subject, "analysis": name, "runs": bool(runs), "detail": detail})
    return pd.DataFrame(rows, columns=["participant", "analysis", "runs", "detail"])


def _mark_not_retrieved(cfg, inputs: dict, plan: pd.DataFrame) -> dict[tuple[str, str], list[Path]]:
    """Jobs whose annexed inputs have no content (DataLad datasets): marked missing in the plan, never started."""
    from bids_ketamine.annex import CONTENT_NOT_RETRIEVED, datalad_get_command, not_retrieved

    from bids_ketamine.io.derivatives import DerivativesWriter

    done = DerivativesWriter(cfg.output_dir)  # dropped after an earlier run finished it: skipped as done, not missing
    found = {key: paths for key, paths in not_retrieved(cfg, inputs, plan).items()
             if cfg.rerun or not done.is_done(*key)}
    for (subject, analysis), paths in found.items():
        at = (plan["participant"] == subject) & (plan["analysis"] == analysis)
        plan.loc[at, "runs"] = False
        plan.loc[at, "detail"] = f"{CONTENT_NOT_RETRIEVED}: {datalad_get_command(paths)}"
    return found


def _print_retrieval(not_retrieved: dict[tuple[str, str], list[Path]], stream=None) -> None:
    """The ``datalad get`` that retrieves exactly what this run needs and does not have (nothing when complete)."""
    if not not_retrieved:
        return
    from bids_ketamine.annex import datalad_get_command

    paths = list(dict.fromkeys(p for _, found in sorted(not_retrieved.items()) for p in found))
    print(f"Content not retrieved (git-annex) for {len(not_retrieved)} participant analyses; retrieve exactly what "
          f"this run needs with:\n  {datalad_get_command(paths)}", file=stream or sys.stdout)


def table_refusals(cfg, inputs: dict, plan: pd.DataFrame) -> dict[tuple[str, str], BidsKetamineError]:
    """``(participant, analysis) -> error`` for the jobs a defect of the study's tables stops (``tables``): only
    where the analysis applies (it would run, or connectivity has BOLD whose sessions' conditions are missing)."""
    from bids_ketamine.tables import participant_level_refusals

    try:
        blocks = bool(getattr(cfg.params("spectroscopy"), "blocks", True))
    except NotBuiltError:
        blocks = True
    analyses = list(dict.fromkeys(plan["analysis"]))
    refusals = participant_level_refusals(cfg.bids_dir, cfg.design, inputs, analyses, blocks=blocks)
    applies = {(r.participant, r.analysis) for r in plan.itertuples()
               if r.runs or (r.analysis == "connectivity" and inputs[r.participant].bold)}
    return {key: error for key, error in refusals.items() if key in applies}


def print_plan(plan: pd.DataFrame, stream=None) -> None:
    from bids_ketamine.annex import CONTENT_NOT_RETRIEVED

    stream = stream or sys.stdout
    print("Input inventory (what each analysis will use, or why it will not run):", file=stream)
    for subject, rows in plan.groupby("participant", sort=True):
        print(f"  sub-{subject}", file=stream)
        for row in rows.itertuples():
            mark = "run " if row.runs else "miss" if str(row.detail).startswith(CONTENT_NOT_RETRIEVED) else \
                "FAIL" if str(row.detail).startswith("refused:") else "skip"
            print(f"    [{mark}] {row.analysis:<13} {row.detail}", file=stream)


def _exit_code(statuses: list[dict]) -> int:
    failed = [s for s in statuses if not s["ok"]]
    if not failed:
        return EXIT_OK
    codes = {s["exit_code"] for s in failed}
    return codes.pop() if len(codes) == 1 else EXIT_PARTICIPANT_FAILED


def run_participant_level(cfg) -> int:
    _validate(cfg)
    derivatives, subjects, participants, sessions, inputs = discover(cfg)
    plan = plan_table(cfg, inputs)
    not_retrieved = _mark_not_retrieved(cfg, inputs, plan)
    refused = {key: error for key, error in table_refusals(cfg, inputs, plan).items() if key not in not_retrieved}
    for key, error in refused.items():  # the inventory says why the job is refused
        at = (plan["participant"] == key[0]) & (plan["analysis"] == key[1])
        plan.loc[at, "runs"] = False
        plan.loc[at, "detail"] = f"refused: {error}"
    if cfg.analyses is None:  # default: every analysis whose inputs exist for someone
        chosen = sorted(set(plan.loc[plan["runs"], "analysis"]) | {a for _, a in refused} |
                        {a for _, a in not_retrieved}, key=list(ANALYSES).index)
    else:
        chosen = cfg.analyses
    refused = {k: v for k, v in refused.items() if k[1] in chosen}
    not_retrieved = {k: v for k, v in not_retrieved.items() if k[1] in chosen}
    print_plan(plan[plan["analysis"].isin(chosen)] if chosen else plan)
    _print_retrieval(not_retrieved)
    runnable = plan[plan["runs"] & plan["analysis"].isin(chosen)]
    if runnable.empty and not refused and not not_retrieved:
        not_built = plan[plan["detail"].str.contains("not built yet", regex=False)]
        if cfg.analyses and len(not_built) and set(not_built["analysis"]) >= set(cfg.analyses):
            raise NotBuiltError(not_built["detail"].iloc[0], fix="leave it out of --analyses")
        raise NoMatchError("no participant has the inputs of any selected analysis (after labels and filters)",
                           path=cfg.bids_dir, fix="check --participant-label, --session-label, --task-id, "
                                                  "--bids-filter-file and -d/--derivatives")
    if cfg.dry_run:
        print(f"--dry-run: {len(runnable)} participant analyses would run; stopping here.")
        return EXIT_OK
    writer = _writer(cfg, derivatives)
    removed = remove_leftovers(cfg, writer)
    for subject, rows in plan.groupby("participant"):
        writer.write_table(rows.drop(columns="participant"), entities={"sub": subject}, suffix="inventory",
                           columns=INVENTORY_COLUMNS, sources=[cfg.bids_dir / f"sub-{subject}"],
                           description="Inputs each analysis uses for this participant, or why it does not run")
    jobs = []
    for row in runnable.itertuples():
        if not cfg.rerun and writer.is_done(row.participant, row.analysis):
            LOG.info("sub-%s: %s finished in an earlier run; skipped (use --rerun to recompute)", row.participant,
                     row.analysis)
            continue
        writer.forget(row.participant, row.analysis)
        jobs.append((row.participant, row.analysis))
    from bids_ketamine.annex import not_retrieved_error
    from bids_ketamine.workflows.participant import run_participant_jobs

    statuses = [{"subject": subject, "analysis": analysis, "ok": False, "exit_code": error.exit_code,
                 "message": str(error)} for (subject, analysis), error in sorted(refused.items())]
    for subject, analysis in refused:
        writer.forget(subject, analysis)  # a repaired table re-runs it
    for (subject, analysis), paths in sorted(not_retrieved.items()):  # never started: content not retrieved
        error = not_retrieved_error(subject, analysis, paths)
        statuses.append({"subject": subject, "analysis": analysis, "ok": False, "exit_code": error.exit_code,
                         "message": str(error)})
    statuses += run_participant_jobs(cfg, inputs, jobs, dataset_links=writer.dataset_links,
                                     container=writer.container) if jobs else []
    removed += writer.remove_stale_staging()  # of workers killed during this run (their locks died with them)
    failed = [s for s in statuses if not s["ok"]]
    cleaned = clean_work_dir(cfg) if cfg.clean_workdir and not failed else []
    try:
        record_run(cfg, writer, {"jobs": statuses, "removed": removed + cleaned})
    except CannotCreateOutputError:
        if not any(s["exit_code"] == EXIT_CANNOT_CREATE_OUTPUT for s in failed):
            raise
        # the disk is full: the jobs' one line below says so; a run record cannot be written either
    else:
        build_reports_safely(cfg.output_dir, sorted(set(plan["participant"])), group=False)
    print_failures(failed)
    LOG.info("participant level: %d run, %d failed, %d skipped as done%s", len(statuses), len(failed),
             len(runnable) - len(jobs), f"; removed {len(removed + cleaned)} leftover(s)" if removed + cleaned
             else "")
    return _exit_code(statuses)


def print_failures(failed: list[dict], stream=None) -> None:
    """One line per failed participant job; jobs that could not write (a full disk) share one line."""
    stream = stream or sys.stderr
    unwritable = [s for s in failed if s["exit_code"] == EXIT_CANNOT_CREATE_OUTPUT]
    for status in failed:
        if status["exit_code"] != EXIT_CANNOT_CREATE_OUTPUT:
            print(f"bids-ketamine: sub-{status['subject']} {status['analysis']} failed: {status['message']}",
                  file=stream)
    if unwritable:
        jobs = ", ".join(f"sub-{s['subject']} {s['analysis']}" for s in unwritable[:5])
        more = f" and {len(unwritable) - 5} more" if len(unwritable) > 5 else ""
        print(f"bids-ketamine: error: {unwritable[0]['message']} ({len(unwritable)} participant "
              f"analys{'is' if len(unwritable) == 1 else 'es'} not "
              f"written: {jobs}{more})", file=stream)


def remove_leftovers(cfg, writer) -> list[str]:
    """Remove what killed runs left in the output and work folders (only our own files, only those no live job
    holds a lock on) and say so; returns what was removed, for the run record."""
    from bids_ketamine.workflows.participant import remove_stale_states

    from bids_ketamine.io.derivatives import remove_stale_temporaries

    removed = writer.remove_stale_staging() + remove_stale_temporaries(writer.root)
    try:
        removed += remove_stale_states(cfg.work_dir)
    except OSError as exc:
        LOG.warning("could not look for leftovers in the work folder %s (%s)", cfg.work_dir, exc)
    for item in removed:
        LOG.info("removed a leftover of a killed run: %s", item)
    return removed


def clean_work_dir(cfg) -> list[str]:
    """``--clean-workdir``: remove the work folder after a successful run, and say how much it held."""
    work = Path(cfg.work_dir)
    if not work.exists():
        return []
    size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(work, ignore_errors=True)
    from bids_ketamine.io.failures import human_bytes

    LOG.info("--clean-workdir: removed the work folder %s (%s)", work, human_bytes(size))
    return [str(work)]


def run_group_level(cfg) -> int:
    """The group level; a run that fails as a whole (a refused table...) is still recorded in ``logs/`` with its
    one-line reason, so the group report's "Errors and exclusions" lists it. With ``--participant-outputs``
    (consortium), verified and compatible site exports are copied into the output folder first."""
    try:
        if cfg.participant_outputs:
            from bids_ketamine.consortium.pool import pool_into_output

            pool_into_output(cfg)
        else:
            _validate(cfg)
        return _group_level(cfg)
    except BidsKetamineError as exc:
        record_failed_group_run(cfg, exc)
        raise


def record_failed_group_run(cfg, exc: BidsKetamineError) -> None:
    """Record a group run that stopped before its analyses ran, as a failure of each analysis it would have run."""
    from bids_ketamine.io.derivatives import DerivativesWriter

    if not (cfg.output_dir / "dataset_description.json").exists():
        return  # no output folder to report on
    chosen = cfg.analyses or [name for name, a in ANALYSES.items() if a.has_group_inputs(cfg.output_dir)]
    if not chosen:
        return
    status = {"ok": False, "exit_code": exc.exit_code, "message": str(exc), "stage": "before the analyses"}
    try:
        record_run(cfg, DerivativesWriter(cfg.output_dir), {"group": {name: dict(status) for name in chosen}})
    except (BidsKetamineError, OSError) as err:  # e.g. the disk is full: the one-line error is what matters
        LOG.warning("the failed group run could not be recorded (%s)", err)
        return
    build_reports_safely(cfg.output_dir, [], group=True)


def _group_level(cfg) -> int:
    from bids_ketamine.design import participants_table, sessions_table
    from bids_ketamine.discovery import find_derivatives

    derivatives = find_derivatives(cfg.bids_dir, cfg.derivatives, cfg.output_dir)
    participants = participants_table(cfg.bids_dir, cfg.design)
    subjects = cfg.participant_label
    if subjects:
        missing = sorted(set(subjects) - set(participants["participant_id"]))
        if missing:
            raise NoMatchError(f"participant(s) {', '.join('sub-' + m for m in missing)} not in participants.tsv",
                               path=cfg.bids_dir / "participants.tsv", fix="check --participant-label")
        participants = participants[participants["participant_id"].isin(subjects)].reset_index(drop=True)
    sessions = sessions_table(cfg.bids_dir, cfg.design, subjects)
    if cfg.analyses is None:
        chosen = [name for name, a in ANALYSES.items() if a.has_group_inputs(cfg.output_dir)]
        if not chosen:
            raise NoMatchError("no participant-level outputs found in the output folder", path=cfg.output_dir,
                               fix="run the participant level first (same output_dir)")
    else:
        chosen = cfg.analyses
    if cfg.dry_run:
        print(f"--dry-run: group level would run {', '.join(chosen)} on {len(participants)} participants.")
        return EXIT_OK
    writer = _writer(cfg, derivatives)
    with resampling_backend(cfg.dask_scheduler):
        results, failures = _run_group_analyses(cfg, chosen, participants, sessions, writer)
    record_run(cfg, writer, {"group": results})
    build_reports_safely(cfg.output_dir, subjects_written(cfg.output_dir, results), group=True)
    if not failures:
        return EXIT_OK
    return failures[0] if len(set(failures)) == 1 else EXIT_PARTICIPANT_FAILED


def subjects_written(output_dir: Path, results: dict[str, Any]) -> list[str]:
    """Participants a group analysis wrote into (``sub-<label>/...``, e.g. a saved model's per-patient prediction):
    their reports are rebuilt with the group report, so the new item appears without a participant re-run."""
    subjects = set()
    for result in results.values():
        for path in result.get("outputs", []):
            try:
                first = Path(path).relative_to(output_dir).parts[0]
            except (ValueError, IndexError):
                continue
            if first.startswith("sub-") and (Path(output_dir) / first).is_dir():
                subjects.add(first[len("sub-"):])
    return sorted(subjects)


def build_reports_safely(output_dir: Path, subjects: list[str], *, group: bool) -> list[Path]:
    """HTML reports from what is in the output folder; a report problem is logged, never fails the analyses."""
    from bids_ketamine.reports import build_group_report, build_participant_report

    built = []
    for subject in subjects:
        try:
            built.append(build_participant_report(output_dir, subject))
        except Exception as exc:  # reports are a view on results; their failure must not lose the results
            LOG.warning("sub-%s: report not built (%s: %s)", subject, type(exc).__name__, exc)
    if group:
        try:
            built.append(build_group_report(output_dir))
        except Exception as exc:
            LOG.warning("group report not built (%s: %s)", type(exc).__name__, exc)
    return built


def rebuild_reports(cfg) -> int:
    """``--reports-only``: rebuild reports from existing outputs without recomputing anything."""
    from bids_ketamine.reports import build_reports

    if not (cfg.output_dir / "dataset_description.json").exists():
        raise NoMatchError("no bids_ketamine outputs to build reports from", path=cfg.output_dir,
                           fix="run the participant (and group) level first, or point at the right output_dir")
    for path in build_reports(cfg.output_dir, cfg.participant_label, group=cfg.level == "group"):
        print(f"report: {path}")
    return EXIT_OK


@contextmanager
def resampling_backend(dask_scheduler: str | None) -> Iterator[None]:
    """Route joblib (permutations, bootstrap, surrogates) to a dask.distributed cluster when one is given.

    Analyses seed every resample independently, so the backend changes where work runs, never its result.
    """
    if not dask_scheduler:
        yield
        return
    try:
        import joblib
        from dask.distributed import Client
    except ImportError as exc:
        raise UsageError("--dask-scheduler needs dask.distributed", fix="pip install 'bids_ketamine[dask]'") from exc
    import dask

    # dask's own connect timeout (30 s unless the user's dask config or DASK_* environment says otherwise)
    timeout = dask.config.get("distributed.comm.timeouts.connect", default="30s")
    try:
        client = Client(dask_scheduler, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise TemporaryFailure(f"cannot reach the dask scheduler at {dask_scheduler} ({exc})",
                               fix="check the address and that the scheduler is running") from exc
    try:
        with joblib.parallel_config(backend="dask"):
            yield
    finally:
        client.close()


def _group_subjects(cfg, name: str) -> list[str] | None:
    """The participants a group analysis uses, for checking their table rows: those whose participant level
    finished (done markers), else (tables imported into the folder) the selected ones (None: everyone)."""
    marker = f"_{name}.json"
    done = sorted(p.name[len("sub-"):-len(marker)] for p in (cfg.output_dir / ".bids_ketamine" / "done").glob(
        f"sub-*{marker}"))
    if cfg.participant_label:
        done = [s for s in done if s in cfg.participant_label]
    return done or cfg.participant_label


def _run_group_analyses(cfg, chosen, participants, sessions, writer) -> tuple[dict[str, Any], list[int]]:
    results: dict[str, Any] = {}
    failures: list[int] = []
    for name in chosen:
        LOG.info("group level: %s ...", name)
        try:
            from bids_ketamine.tables import group_level_refusal

            refusal = group_level_refusal(cfg.bids_dir, cfg.design, name, _group_subjects(cfg, name))
            if refusal is not None:
                raise refusal
            module = ANALYSES[name].module("group")
            work = cfg.work_dir / "group" / name
            work.mkdir(parents=True, exist_ok=True)
            # on a dask cluster joblib sizes the work to the cluster; n_jobs=1 would make analyses bypass joblib
            outputs = module.run_group(cfg.output_dir, participants=participants, sessions=sessions,
                                       params=cfg.params(name), design=cfg.design, writer=writer, work_dir=work,
                                       seed=cfg.random_seed, n_jobs=-1 if cfg.dask_scheduler else cfg.nprocs)
            results[name] = {"ok": True, "outputs": [str(p) for p in outputs or []]}
        except (BidsKetamineError, OSError, EOFError, MemoryError) as exc:
            if not isinstance(exc, BidsKetamineError):  # a full disk, an unreadable input, memory (else a bug)
                from bids_ketamine.io.failures import describe

                mapped = describe(exc, outputs=[cfg.output_dir, cfg.work_dir], who=f"the group {name} analysis")
                if mapped is None:
                    raise
                exc = mapped
            print(f"bids-ketamine: group {name} failed: {exc}", file=sys.stderr)
            results[name] = {"ok": False, "exit_code": exc.exit_code, "message": str(exc)}
            failures.append(exc.exit_code)
            if cfg.stop_on_first_crash:
                break
    return results, failures
