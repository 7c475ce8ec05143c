"""tuner: automated inference tuning for PyTorch models.

One search, as the folders read (docs/development.md, docs/architecture.md §1), top to bottom:

    cli/        parse a command, hand it on
    nightly/    a job of searches with a history, regression check and champion
    search/     one search on one hardware class of a Ray cluster: Ray Tune + Optuna,
                confirmation, outputs
    deploy/     the pick in its runtime's own form, logged, registered and checked
    tracking/   MLflow: parent and child runs, sync, the registered model, history
    outputs/    trials.csv and friends, the terminal and MLflow descriptions, plots
    decide/     Pareto front, recommendation, confirmation statistics (pure pandas)
    trial/      one variant built and measured in a fresh process
    inputs/     the model, its weights, the data, the fp32 reference
    build/      precision -> quantize -> layout -> compile
    measure/    latency protocol, accuracy, memory, interference, hardware and its ceiling
    config/     space and job files, the search request
    core/       the trial result and its schema, Variant, errors, process settings
"""

__version__ = "0.1.0"
