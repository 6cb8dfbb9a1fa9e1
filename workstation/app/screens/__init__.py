"""Screens of the ws viewer: recordings, run, compare, stats, help."""
