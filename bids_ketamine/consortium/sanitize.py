"""What may not leave a site: sidecar fields that identify a person, and the site's own file-system paths.

Why a denylist of names: our sidecars never copy a raw header on purpose, but a raw sidecar or a NIfTI-MRS header
can carry DICOM attributes (the DICOM PS3.15 basic confidentiality profile lists them: names, IDs, dates, places),
and a future analysis could copy one through. They are removed wherever they appear, at any depth. Absolute paths
name the site's folders (often a user name); they are cut to the file name.
"""

from __future__ import annotations

import re
from typing import Any

#: Attribute names (case-insensitive) that identify a person or an examination, from DICOM PS3.15 Annex E and the
#: NIfTI-MRS header standard.
IDENTIFYING_FIELDS = frozenset(name.lower() for name in (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientDoB", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "OtherPatientIDs", "OtherPatientNames", "EthnicGroup", "Occupation", "MedicalRecordLocator",
    "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "FrameOfReferenceUID", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime",
    "SeriesTime", "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "RequestingPhysician", "ImageComments", "PatientComments", "OriginalFile", "ConversionTime",
))
_ABSOLUTE_PATH = re.compile(r"(?:file://|(?<![\w.:/~-]))/(?:[^\s/'\"`]+/)+([^\s/'\"`]+)")


def redact_paths(text: str) -> str:
    """Absolute paths (and ``file://`` URIs) cut to their last part: ``/home/ana/study/atlas.nii.gz`` ->
    ``atlas.nii.gz``; BIDS URIs (``bids:raw:sub-01/anat/...``) and relative paths are kept."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), text)


def sanitize(value: Any, removed: set[str] | None = None) -> Any:
    """A JSON value without identifying fields (names collected in ``removed``) and without absolute paths."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if str(key).lower() in IDENTIFYING_FIELDS:
                if removed is not None:
                    removed.add(str(key))
                continue
            out[key] = sanitize(item, removed)
        return out
    if isinstance(value, list):
        return [sanitize(v, removed) for v in value]
    if isinstance(value, str):
        return redact_paths(value)
    return value
