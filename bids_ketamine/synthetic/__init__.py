"""Synthetic BIDS studies with planted, documented effects: the demo and the ground truth of the tests."""
