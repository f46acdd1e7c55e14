"""One validated configuration for a run: CLI flags on top of an optional config file on top of defaults.

The config file (TOML, YAML or JSON) has a ``[design]`` section (``bids_ketamine.design.StudyDesign``), one section
per analysis (``[structural]``, ``[connectivity]``, ``[spectroscopy]``, validated by that analysis' parameter model)
and an optional ``random_seed``. Unknown or mistyped fields are refused, naming the field, the file and the fix.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bids_ketamine.design import StudyDesign
from bids_ketamine.errors import NotBuiltError, UsageError

DEFAULT_SEED = 20240601
#: analysis name -> (module, class) of its parameter model; imported only when needed (keeps --help fast).
PARAM_MODELS = {
    "structural": ("bids_ketamine.structural.params", "StructuralParams"),
    "connectivity": ("bids_ketamine.connectivity.params", "ConnectivityParams"),
    "spectroscopy": ("bids_ketamine.spectroscopy.params", "SpectroscopyParams"),
}
#: ``[pooling]``: the consortium group level from site exports (``bids_ketamine.consortium.compat.PoolingParams``).
TOP_LEVEL_KEYS = {"design", "random_seed", "pooling", *PARAM_MODELS}


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON config file into a dict (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("config file not found", path=path, fix="give an existing --config-file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"unknown config format {suffix!r}", path=path,
                             fix="use a .toml, .yaml/.yml or .json file")
    except UsageError:
        raise
    except Exception as exc:  # each parser has its own error type; the message says where
        raise UsageError(f"cannot parse config: {str(exc).splitlines()[0]}", path=path,
                         fix="fix the syntax (see the README's config example)") from exc
    if not isinstance(data, dict):
        raise UsageError("config must be a mapping of sections", path=path, fix="see the README's config example")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise UsageError(f"unknown section {unknown[0]!r}", path=path,
                         fix=f"use only {', '.join(sorted(TOP_LEVEL_KEYS))}")
    return data


def validation_message(exc: ValidationError, section: str) -> tuple[str, str]:
    """The first problem of a pydantic error as (problem, fix), with a dotted field name."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in (section, *first["loc"]))
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        return f"unknown field {where}{more}", "remove it or correct its spelling (see the README's config reference)"
    return f"field {where}: {first['msg']}{more}", "correct the value (see the README's config reference)"


def build_model(model: type[BaseModel], data: dict[str, Any], section: str, path: Path | None) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problem, fix = validation_message(exc, section)
        raise UsageError(problem, path=path or "--config-file", fix=fix) from exc


def param_model(analysis: str) -> type[BaseModel]:
    module, name = PARAM_MODELS[analysis]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"bids_ketamine.{analysis}"):
            raise NotBuiltError(f"the {analysis} analysis is not built yet in this version (no parameters)",
                                fix=f"leave '{analysis}' out of --analyses") from exc
        raise


@dataclass
class RunConfig:
    """Everything a run needs, built once in the CLI and passed explicitly."""

    bids_dir: Path
    output_dir: Path
    level: str
    work_dir: Path
    design: StudyDesign = field(default_factory=StudyDesign)
    analysis_sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_path: Path | None = None
    participant_label: list[str] | None = None
    session_label: list[str] | None = None
    task_id: str | None = None
    bids_filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    derivatives: dict[str, Path] = field(default_factory=dict)
    analyses: list[str] | None = None
    skip_bids_validation: bool = False
    bids_database_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    clean_workdir: bool = False
    use_plugin: Path | None = None
    stop_on_first_crash: bool = False
    dask_scheduler: str | None = None
    random_seed: int = DEFAULT_SEED
    dry_run: bool = False
    reports_only: bool = False
    rerun: bool = False
    verbose: int = 0
    #: group level: site exports to pool (``bids-ketamine export``), instead of participant outputs made here
    participant_outputs: list[Path] | None = None
    _params: dict[str, BaseModel] = field(default_factory=dict)

    def params(self, analysis: str) -> BaseModel:
        """The validated parameters of one analysis (defaults overlaid with the config file's section)."""
        if analysis not in self._params:
            self._params[analysis] = build_model(param_model(analysis), self.analysis_sections.get(analysis, {}),
                                                 analysis, self.config_path)
        return self._params[analysis]

    def as_record(self) -> dict[str, Any]:
        """A JSON-able record of the run configuration, for provenance."""
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()
                  if not k.startswith("_") and k not in ("design", "analysis_sections")}
        record["derivatives"] = {k: str(v) for k, v in self.derivatives.items()}
        if self.participant_outputs:
            record["participant_outputs"] = [str(p) for p in self.participant_outputs]
        record["design"] = self.design.model_dump()
        record["parameters"] = {name: model.model_dump(mode="json") for name, model in self._params.items()}
        return record


def design_from_file(data: dict[str, Any], path: Path | None) -> StudyDesign:
    return build_model(StudyDesign, data.get("design", {}) or {}, "design", path)  # type: ignore[return-value]
