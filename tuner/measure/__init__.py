"""Measurement: how to time (latency.py), how close to fp32 (accuracy.py), how much memory (memory.py).

Nothing here imports Ray or MLflow, so the tests of this package run in milliseconds.
"""
