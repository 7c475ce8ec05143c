"""tuner: automated inference tuning for PyTorch models.

The data flow of one search, top to bottom (see DESIGN.md §1):

    space.py     YAML -> SearchSpace -> Optuna define-by-run function
    variant.py   Variant: the frozen description of one inference variant
    models.py    model + weights + eval/calibration data
    build/       precision -> quantize -> layout -> compile
    measure/     latency protocol, accuracy against the fp32 reference, memory
    trial.py     the Ray trainable: Variant -> build -> measure -> report
    tracking.py  MLflow parent/child runs
    select.py    Pareto front + recommendation (pure pandas)
    report.py    terminal table, CSV/YAML outputs
    search.py    wires Ray Tune + OptunaSearch + tracking + select
"""

__version__ = "0.1.0"
