"""Accuracy across the whole range: LCS against the paper's baselines on the bundled digits."""
