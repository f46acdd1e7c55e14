"""Can these features be pooled? The settings that made each exported table, compared across sites.

Why before pooling: features made by another app version, from another source (FreeSurfer volumes beside
antspyx volumes), on another atlas or template space, or with other feature parameters (the built-in pipeline's
resolution, scrubbing thresholds, MRS fit settings) differ for reasons that are not the participants'. Pooled
silently they become a site effect that ComBat may or may not absorb. So every table's sidecar is read, its
settings are compared with the first participant's (and the app version with this group level's), and the first
difference is refused in one line naming the site, the participant and the field. A study that accepts a
difference lists the field in ``[pooling] accept_differences``; the accepted differences go into the methods.

Field names are the config paths users know: ``app_version``, ``structural.feature_source``, ``structural.atlas``,
``structural.space``, ``structural.anat.<parameter>``, ``connectivity.atlas``, ``connectivity.space``,
``connectivity.participant.<parameter>``, ``spectroscopy.basis``, ``spectroscopy.<section>.<parameter>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import BadDataError

#: Parameters that do not change a feature value (QC thresholds that refuse, figure switches, memory chunks, the
#: source order (the source used is compared), and atlas paths (the atlas is compared by name and regions)).
IGNORED_PARAMETERS = {
    "structural": {"sources", "write_qc", "min_tiv_cm3", "max_tiv_cm3", "min_template_correlation",
                   "smoothing_fwhm_mm", "atlas_nifti", "atlas_labels", "atlas_name"},
    "connectivity": {"chunk_volumes", "atlas_nifti", "atlas_labels", "cifti_dlabel"},
    "spectroscopy": {"figures", "group_metabolites", "model_from_minute"},
}
#: Config section of each analysis' participant-level parameters (field names follow the config file).
PARAMETER_SECTION = {"structural": "structural.anat", "connectivity": "connectivity.participant",
                     "spectroscopy": "spectroscopy"}
UNRECORDED = "(not recorded)"


class PoolingParams(BaseModel):
    """Config section ``[pooling]`` of the coordinating site's group level (``--participant-outputs``)."""

    model_config = ConfigDict(extra="forbid")

    accept_differences: tuple[str, ...] = Field(
        (), description="Fields allowed to differ between exported participants (e.g. 'app_version', "
                        "'structural.anat.builtin_work_resolution_mm'); each accepted difference is named in the "
                        "methods. Default: none (any difference is refused).")


def flatten(values: Any, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(values, dict):
        for key, value in values.items():
            name = f"{prefix}.{key}"
            out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    else:
        out[prefix] = values
    return out


def _canonical(value: Any) -> str:
    """A comparable text of a value (floats by their shortest repr, lists and dicts as sorted JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _space_of(sources: list[Any]) -> str | None:
    for source in sources or []:
        match = re.search(r"_space-([A-Za-z0-9]+)_", str(source))
        if match:
            return match.group(1)
    return None


def table_fields(analysis: str, table: Path, sidecar: dict[str, Any]) -> dict[str, str]:
    """The settings that made one exported table, by field name (values as comparable text)."""
    generated = sidecar.get("GeneratedBy") or [{}]
    fields: dict[str, Any] = {"app_version": (generated[0] or {}).get("Version")}
    params = sidecar.get("Parameters") if isinstance(sidecar.get("Parameters"), dict) else {}
    ignored = set(IGNORED_PARAMETERS.get(analysis, ()))
    if analysis == "structural":
        source = sidecar.get("FeatureSource")
        atlas = re.search(r"_atlas-([A-Za-z0-9]+)_", table.name)
        fields["structural.feature_source"] = source
        fields["structural.atlas"] = f"{atlas.group(1) if atlas else '?'} ({sidecar.get('Atlas')})"
        fields["structural.space"] = sidecar.get("FeatureSpace", sidecar.get("TemplateSpace", UNRECORDED if source
                                                                               != "freesurfer" else None))
        if source != "builtin":
            ignored |= {k for k in params if k.startswith("builtin_")}
    elif analysis == "connectivity":
        name = sidecar.get("AtlasName") or (re.search(r"_atlas-([A-Za-z0-9]+)_", table.name) or [None, "?"])[1]
        fields["connectivity.atlas"] = f"{name} ({sidecar.get('Atlas', UNRECORDED)})"
        fields["connectivity.space"] = _space_of(sidecar.get("Sources")) or params.get("space")
    elif analysis == "spectroscopy":
        basis = sidecar.get("Basis")
        if isinstance(basis, dict):
            basis = {k: v for k, v in basis.items() if k != "FromCache"}
        fields["spectroscopy.basis"] = basis
    for key, value in flatten({k: v for k, v in params.items() if k not in ignored},
                              PARAMETER_SECTION[analysis]).items():
        fields[key] = value
    return {k: (UNRECORDED if v is None and k == "app_version" else _canonical(v)) for k, v in fields.items()}


@dataclass(frozen=True)
class TableSettings:
    site: str
    participant: str
    analysis: str
    table: str
    fields: dict[str, str]


def check_compatible(tables: list[TableSettings], accept: tuple[str, ...] = ()) -> dict[str, dict[str, list[str]]]:
    """Refuse the first difference that is not accepted (``BadDataError``, one line: site, participant, field);
    return the accepted differences as ``field -> site -> values``.

    The reference of each field is the first table that has it (sites in the order given, participants sorted),
    except the app version, whose reference is this group level's own version.
    """
    accepted = set(accept)
    reference: dict[tuple[str, str], TableSettings] = {}
    seen: dict[str, dict[str, set[str]]] = {}
    for table in tables:
        names = set(table.fields)
        for (analysis, name), ref in reference.items():  # a field the reference has and this table lacks
            if analysis == table.analysis and name not in names:
                names.add(name)
        for name in sorted(names):
            value = table.fields.get(name, UNRECORDED)
            seen.setdefault(name, {}).setdefault(table.site, set()).add(value)
            if name == "app_version":
                ref_value, where = __version__, f"this group level runs bids_ketamine {__version__}"
            else:
                ref = reference.setdefault((table.analysis, name), table)
                ref_value = ref.fields.get(name, UNRECORDED)
                where = f"{ref_value} in site {ref.site} (sub-{ref.participant})"
            if value != ref_value and name not in accepted:
                raise BadDataError(
                    f"site {table.site}, sub-{table.participant}: {name} is {value} but {where}; features made with "
                    "other settings cannot be pooled", path=table.table,
                    fix=f"re-run that site's participant level with the same settings, or accept the difference "
                        f"with [pooling] accept_differences = [\"{name}\"] in --config-file")
    return {name: {site: sorted(values) for site, values in sites.items()}
            for name, sites in sorted(seen.items())
            if name in accepted and len({v for vs in sites.values() for v in vs}
                                        | ({__version__} if name == "app_version" else set())) > 1}
