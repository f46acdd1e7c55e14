"""Version of bids_ketamine, kept in one place for the package, the CLI and the container labels."""

__version__ = "0.1.0"
