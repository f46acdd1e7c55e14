"""The nipype interface of a participant job: one analysis for one participant (module level, so it pickles)."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec, traits

from bids_ketamine.workflows.participant import run_one


class RunAnalysisInputSpec(BaseInterfaceInputSpec):
    state_file = File(exists=True, mandatory=True, desc="pickled run configuration and inputs")
    subject = traits.Str(mandatory=True)
    analysis = traits.Str(mandatory=True)


class RunAnalysisOutputSpec(TraitedSpec):
    status_file = File(exists=True, desc="JSON status of this participant and analysis")


class RunAnalysis(SimpleInterface):
    """Run one bids_ketamine analysis for one participant; record its status instead of crashing the graph."""

    input_spec = RunAnalysisInputSpec
    output_spec = RunAnalysisOutputSpec

    def _run_interface(self, runtime):
        status = run_one(self.inputs.state_file, self.inputs.subject, self.inputs.analysis)
        path = Path(runtime.cwd) / "status.json"
        path.write_text(json.dumps(status))
        self._results["status_file"] = str(path)
        return runtime
