"""Connectivity heterogeneity (Moujaes, Ji et al. 2024): resting BOLD -> scrubbing -> nuisance regression ->
parcel time series -> Fisher-z connectivity -> global brain connectivity (GBC) -> drug-minus-placebo GBC maps,
and at the group level the dimensionality of those individual maps and their relation to gene expression.

The science lives in small modules (``scrubbing``, ``denoise``, ``parcellate``, ``gbc``); ``participant`` and
``group`` are the thin entry points the command line calls.
"""
