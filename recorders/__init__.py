"""Training side of ws: backbones, data, methods, gates, probes, and the recording format they write.

Only :mod:`recorders.format` (and the standard-library :mod:`recorders.paths`, :mod:`recorders.files`) is
torch-free; the analyses and the viewer import nothing else from here. See ``docs/architecture.md``.
"""
