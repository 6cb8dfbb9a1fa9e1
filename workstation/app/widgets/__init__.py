"""Widgets of the ws viewer: step-indexed plots, the gate bars, the timeline."""
