"""bids_ketamine: who responds to ketamine for depression, and why responses differ, from BIDS MRI data."""

from bids_ketamine.__about__ import __version__

__all__ = ["__version__"]
