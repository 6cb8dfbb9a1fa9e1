"""Sweeps for `ws batch`: spec, manifest, executors, runner."""
