"""Torch-free analyses of ws recordings: collapse diagnostics, statistics across seeds, figures.

- :mod:`analyses.diagnostics`: ``diagnose(rec) -> RecordingDiagnostics`` (per gate set: ratio, phases,
  saturation, L_eff, distance from init, decay-only counterfactual, onset and verdict);
- :mod:`analyses.grouping`: one metric value per run (``metric_names()``), runs grouped by a config key;
- :mod:`analyses.stats`: ``compare(paths, by, metric, ...) -> ComparisonReport`` (``ws stats``);
- :mod:`analyses.figures`: matplotlib figures of ``ws plot``;
- :mod:`analyses.report`: ``load_study(dir) -> Study`` (``ws report``: comparisons per axis, collapse table,
  the paper's claims, provenance).

Import the submodule you need: this package imports nothing eagerly, so ``ws inspect`` does not pay for scipy.
"""
