"""Prompt-learning methods on a frozen CLIP; :mod:`recorders.methods.registry` maps ``--method`` to them."""
