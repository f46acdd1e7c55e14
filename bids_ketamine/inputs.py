"""What discovery found for one participant: plain, typed records that the analyses consume.

Discovery (``bids_ketamine.discovery``) fills these from pybids; analyses read only these records, never the
layout, so they can be tested on files made by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AnatInputs:
    """Anatomical inputs of one participant, in the order of preference the structural analysis uses."""

    t1w: tuple[Path, ...] = ()
    #: sMRIPrep/fMRIPrep: GM probability map in MNI space (``space-MNI..._label-GM_probseg.nii.gz``).
    gm_probseg_mni: Path | None = None
    #: sMRIPrep/fMRIPrep: T1w-to-MNI transform (``from-T1w_to-MNI..._mode-image_xfm.h5`` or ``.nii.gz`` warp).
    t1w_to_mni_xfm: Path | None = None
    #: Brain mask in T1w space from sMRIPrep (``desc-brain_mask``), when present.
    brain_mask_t1w: Path | None = None
    #: MNI template name of the derivatives (e.g. ``MNI152NLin2009cAsym``).
    mni_space: str | None = None
    #: CAT12 modulated GM map (``mwp1*.nii``).
    cat12_mwp1: Path | None = None
    #: FreeSurfer subject directory (with ``stats/aseg.stats`` and ``stats/?h.aparc.stats``).
    freesurfer_dir: Path | None = None
    #: sMRIPrep/fMRIPrep tissue probability maps in T1w space (``label-{GM,WM,CSF}_probseg`` without ``space-``),
    #: keyed ``gm``/``wm``/``csf``: the tissue fractions of an MRS voxel. Empty when any of the three is missing.
    probseg_t1w: dict[str, Path] = field(default_factory=dict)
    session: str | None = None


@dataclass(frozen=True)
class BoldRun:
    """One fMRIPrep-preprocessed resting BOLD run and its companions."""

    bold: Path
    confounds: Path
    mask: Path | None
    space: str
    session: str | None
    run: str | None
    task: str | None
    #: Drug condition of the session from the study design (``placebo``, ``ketamine``, ...).
    condition: str | None
    repetition_time: float | None = None


@dataclass(frozen=True)
class MrsAcquisition:
    """One single-voxel spectroscopy acquisition (``svs``) with its references."""

    svs: Path
    #: References by role: ``water`` (the plain ``mrsref``), and ``acq-`` variants (``ecc``, ``quant``, ...).
    references: dict[str, Path] = field(default_factory=dict)
    events: Path | None = None
    session: str | None = None
    acq: str | None = None
    run: str | None = None
    task: str | None = None
    #: BIDS ``voi-`` entity (the volume of interest), when two voxels are measured in one session.
    voi: str | None = None
    #: Pretreatment of the session from the study design (``placebo``, ``naltrexone``).
    pretreatment: str | None = None
    #: Drug condition of the session (``ketamine``...), when the design has one.
    condition: str | None = None


@dataclass(frozen=True)
class ParticipantInputs:
    """Everything one participant brings to each analysis."""

    subject: str
    anat: AnatInputs = AnatInputs()
    bold: tuple[BoldRun, ...] = ()
    mrs: tuple[MrsAcquisition, ...] = ()
    #: participants.tsv row (plus phenotype columns) for this subject, as strings.
    phenotype: dict[str, str] = field(default_factory=dict)
