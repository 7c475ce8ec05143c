"""Measurement: how to time (latency.py), how close to fp32 (accuracy.py), how much memory
(memory.py), whether anything else ran meanwhile (interference.py), which machine this is
(hardware.py) and what it can do at most (ceiling.py).

Nothing here imports Ray or MLflow (an import contract holds it), so its tests run fast.
"""
