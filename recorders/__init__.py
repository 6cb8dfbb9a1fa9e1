"""Training side of ws: backbones, data, methods, gates, probes and the recording writer.

Only :mod:`recorders.recording_format` and :mod:`recorders.errors` are torch-free; import the rest lazily.
"""
