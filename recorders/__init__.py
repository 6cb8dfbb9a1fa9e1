"""Training side of ws: backbones, data, methods, gates, probes and the recording writer.

Only :mod:`recorders.format` and :mod:`recorders.format.errors` are torch-free; import the rest lazily.
"""
