"""Structural prediction of ketamine response: grey-matter features (participant) and a leakage-free classifier (group)."""
