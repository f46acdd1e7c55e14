"""Registry of the three analyses: where their participant and group entry points live, imported lazily.

An analysis whose modules are not in this installation is reported plainly as not built, never faked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bids_ketamine.errors import NotBuiltError


@dataclass(frozen=True)
class Analysis:
    name: str
    title: str
    #: glob (relative to the output folder) of participant-level tables the group level consumes
    group_inputs: str

    def module(self, level: str) -> ModuleType:
        """``bids_ketamine.<name>.participant`` or ``.group``; NotBuiltError when this version lacks it."""
        try:
            return importlib.import_module(f"bids_ketamine.{self.name}.{level}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"bids_ketamine.{self.name}"):
                raise NotBuiltError(f"the {self.title} analysis ({level} level) is not built yet in this version",
                                    fix=f"leave '{self.name}' out of --analyses") from exc
            raise

    def has_group_inputs(self, output_dir: Path) -> bool:
        return any(Path(output_dir).glob(self.group_inputs))


ANALYSES: dict[str, Analysis] = {
    "structural": Analysis("structural", "structural prediction", "sub-*/anat/*_morph.tsv"),
    "connectivity": Analysis("connectivity", "connectivity heterogeneity", "sub-*/**/*minusplacebo_gbc.tsv"),
    "spectroscopy": Analysis("spectroscopy", "spectroscopy", "sub-*/**/*_mrsfit.tsv"),
}
