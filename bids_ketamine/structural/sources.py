"""Grey-matter features from other tools' outputs: CAT12 modulated maps and FreeSurfer volume statistics.

Why both: many consortia have already run CAT12 or FreeSurfer; re-segmenting would waste their quality control.
CAT12's ``mwp1`` map is already Jacobian-modulated GM in template space (sum x voxel volume = GM volume, mm^3), and
its ``report/cat_<name>.xml`` holds TIV. FreeSurfer's ``aparc`` (cortical grey volume per Desikan-Killiany region)
and ``aseg`` (subcortical, cerebellar cortex, brainstem volumes, and eTIV) map one to one onto the default atlas'
region names (``L_superiorfrontal``, ``L_cerebellum``, ``brainstem``...).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError

#: FreeSurfer aseg structure names (lower case, without '-' and '_') -> default-atlas region (without hemisphere).
ASEG_TO_ATLAS = {
    "thalamus": "thalamusproper", "thalamusproper": "thalamusproper", "caudate": "caudate", "putamen": "putamen",
    "pallidum": "pallidum", "accumbensarea": "accumbensarea", "hippocampus": "hippocampus", "amygdala": "amygdala",
    "cerebellumcortex": "cerebellum",
}


# ---------------------------------------------------------------------------------------------------- CAT12
def find_cat12_report(mwp1: str | Path) -> Path | None:
    """CAT12's ``report/cat_<name>.xml`` for ``mri/mwp1<name>.nii`` (or beside it), if present."""
    mwp1 = Path(mwp1)
    name = mwp1.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = name[len("mwp1"):] if name.startswith("mwp1") else name
    for folder in (mwp1.parent.parent / "report", mwp1.parent):
        candidate = folder / f"cat_{stem}.xml"
        if candidate.is_file():
            return candidate
    return None


def read_cat12_tiv(report_xml: str | Path) -> float:
    """TIV (mm^3) from a CAT12 report XML (``<subjectmeasures><vol_TIV>`` in cm^3)."""
    import xml.etree.ElementTree as ET

    report_xml = Path(report_xml)
    try:
        root = ET.parse(report_xml).getroot()
    except ET.ParseError as exc:
        raise BadDataError(f"cannot parse the CAT12 report ({exc})", path=report_xml,
                           fix="re-run CAT12 or remove the broken report") from exc
    node = root.find(".//subjectmeasures/vol_TIV")
    if node is None:
        node = root.find(".//vol_TIV")
    if node is None or not (node.text or "").strip():
        raise BadDataError("CAT12 report has no vol_TIV", path=report_xml, fix="re-run CAT12's segmentation")
    value = float(node.text.strip().strip("[]").split()[0])
    return value * 1000.0


def read_cat12_mwp1(path: str | Path):
    """The CAT12 modulated GM map as a 3-D nibabel image, with its values checked."""
    import nibabel as nib

    from bids_ketamine.structural.gm_features import check_gm_map

    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise BadDataError(f"cannot read the CAT12 map ({exc})", path=path, fix="re-run CAT12") from exc
    data = check_gm_map(img, path)
    if float(data.max()) > 3:
        raise BadDataError(f"CAT12 mwp1 map has values up to {float(data.max()):.3g}, not modulated GM",
                           path=path, fix="give CAT12's mwp1 (modulated GM) map")
    return nib.Nifti1Image(data, img.affine)


# ---------------------------------------------------------------------------------------------------- FreeSurfer
def _column_headers(lines: list[str], path: Path) -> list[str]:
    for line in lines:
        if line.startswith("# ColHeaders"):
            return line.split()[2:]
    raise BadDataError("FreeSurfer stats file has no '# ColHeaders' line", path=path,
                       fix="give an unmodified aseg.stats / ?h.aparc.stats")


def read_freesurfer_stats(path: str | Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """A FreeSurfer ``.stats`` file as (table, measures): the table under ``# ColHeaders`` and the header's
    ``# Measure`` lines keyed by their short name (e.g. ``eTIV``), values in the file's units."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("FreeSurfer stats file not found", path=path,
                                fix="run recon-all to the end (it writes stats/aseg.stats and ?h.aparc.stats)")
    lines = path.read_text(errors="replace").splitlines()
    headers = _column_headers(lines, path)
    measures: dict[str, float] = {}
    for line in lines:
        if line.startswith("# Measure"):
            parts = [p.strip() for p in line[len("# Measure"):].split(",")]
            if len(parts) >= 4:
                try:
                    measures[parts[1]] = float(parts[3])
                except ValueError:
                    continue
    rows = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    bad = [r for r in rows if len(r) != len(headers)]
    if bad:
        raise BadDataError(f"FreeSurfer stats row has {len(bad[0])} fields for {len(headers)} columns", path=path,
                           fix="give an unmodified FreeSurfer stats file")
    table = pd.DataFrame(rows, columns=headers)
    for col in table.columns:
        if col != "StructName":
            converted = pd.to_numeric(table[col], errors="coerce")
            if converted.notna().all():
                table[col] = converted
    return table, measures


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def freesurfer_regional_volumes(subject_dir: str | Path) -> tuple[pd.DataFrame, float]:
    """Regional GM volumes (mm^3) named as the default atlas, and eTIV (mm^3), from a FreeSurfer subject folder.

    Cortex: ``GrayVol`` of ``lh/rh.aparc.stats``; subcortex, cerebellar cortex and brainstem: ``Volume_mm3`` of
    ``aseg.stats``; TIV: aseg's ``eTIV`` measure (FreeSurfer's atlas-scaling estimate).
    """
    subject_dir = Path(subject_dir)
    stats = subject_dir / "stats"
    rows = []
    for hemi, prefix in (("L", "lh"), ("R", "rh")):
        table, _ = read_freesurfer_stats(stats / f"{prefix}.aparc.stats")
        for col in ("StructName", "GrayVol"):
            if col not in table:
                raise BadDataError(f"aparc stats lacks column {col}", path=stats / f"{prefix}.aparc.stats",
                                   fix="give the Desikan-Killiany ?h.aparc.stats of recon-all")
        for name, vol in zip(table["StructName"], table["GrayVol"]):
            rows.append({"region": f"{hemi}_{_norm(name)}", "hemisphere": hemi, "structure": "cortex",
                         "gm_volume_mm3": float(vol)})
    aseg, measures = read_freesurfer_stats(stats / "aseg.stats")
    for col in ("StructName", "Volume_mm3"):
        if col not in aseg:
            raise BadDataError(f"aseg stats lacks column {col}", path=stats / "aseg.stats",
                               fix="give recon-all's stats/aseg.stats")
    for name, vol in zip(aseg["StructName"], aseg["Volume_mm3"]):
        key = _norm(name)
        if key == "brainstem":
            rows.append({"region": "brainstem", "hemisphere": "B", "structure": "brainstem",
                         "gm_volume_mm3": float(vol)})
            continue
        for side, hemi in (("left", "L"), ("right", "R")):
            if key.startswith(side) and key[len(side):] in ASEG_TO_ATLAS:
                region = ASEG_TO_ATLAS[key[len(side):]]
                rows.append({"region": f"{hemi}_{region}", "hemisphere": hemi,
                             "structure": "cerebellum" if region == "cerebellum" else "subcortex",
                             "gm_volume_mm3": float(vol)})
    etiv = measures.get("eTIV", measures.get("EstimatedTotalIntraCranialVol"))
    if etiv is None:
        raise BadDataError("aseg.stats has no eTIV measure", path=stats / "aseg.stats",
                           fix="give recon-all's stats/aseg.stats (FreeSurfer >= 5.3 writes eTIV)")
    table = pd.DataFrame(rows)
    if table["region"].duplicated().any():
        dup = table["region"][table["region"].duplicated()].iloc[0]
        raise BadDataError(f"region {dup} appears twice in the FreeSurfer stats", path=stats,
                           fix="give one unmodified recon-all stats folder")
    return table, float(etiv)


def align_to_atlas(table: pd.DataFrame, atlas_labels: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Order FreeSurfer regions as the atlas does; a region the atlas has but FreeSurfer lacks is an error."""
    names = atlas_labels["name"].tolist()
    missing = [n for n in names if n not in set(table["region"])]
    if missing:
        raise BadDataError(f"FreeSurfer stats lack {len(missing)} atlas regions (e.g. {missing[:3]})", path=path,
                           fix="use the default atlas with FreeSurfer inputs, or give fMRIPrep/CAT12 maps for a "
                               "custom atlas")
    out = table.set_index("region").loc[names].reset_index()
    out["hemisphere"] = atlas_labels["hemisphere"].to_numpy()
    out["structure"] = atlas_labels["structure"].to_numpy()
    return out[["region", "hemisphere", "structure", "gm_volume_mm3"]]
