"""Metrics: transfer ASR (three definitions) with intervals, smoothness, gradient similarity."""
