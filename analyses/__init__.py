"""Torch-free analyses of ws recordings: collapse diagnostics, statistics across seeds, figures."""
