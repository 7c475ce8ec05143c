"""DedupOptunaSearch: the real Ray searcher class driving a real Optuna study (no Ray runtime)."""

from __future__ import annotations

import optuna

from tuner.config.space import SearchSpace
from tuner.core.schema import PENALTY, SAMPLER_OBJECTIVES
from tuner.core.variant import config_key
from tuner.search.sampling import DedupOptunaSearch, initial_points, space_function

SMALL = SearchSpace.model_validate(
    {
        "dimensions": {
            "quantization": ["none"],
            "precision": ["fp32", "bf16"],
            "batch_size": [1, 2],
            "threads": [1],
            "compile": ["eager"],
            "layout": ["contiguous"],
        }
    }  # fmt: skip
).feasible_choices(cores=1, device="cpu", fp16_native=False, bf16_native=True)
METRICS = list(SAMPLER_OBJECTIVES)


def make(choices=SMALL, seed=0):
    return DedupOptunaSearch(
        key=config_key,
        space=space_function(choices),
        metric=METRICS,
        mode=list(SAMPLER_OBJECTIVES.values()),
        points_to_evaluate=initial_points(choices, 4),
        penalty=PENALTY,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
    )


def run(searcher, n):
    labels = []
    for t in range(n):
        config = searcher.suggest(f"t{t}")
        labels.append(config_key(config))
        result = dict(zip(METRICS, (10.0 + t, 5.0, 1.0), strict=True))
        searcher.on_trial_complete(f"t{t}", result=result)
    return labels


def test_every_config_is_measured_once_until_the_space_is_exhausted():
    s = make()
    labels = run(s, 4)  # the space has exactly 4 configs
    assert labels[0] == "fp32 bs1 t1 eager nchw"  # the baseline still comes first
    assert len(set(labels)) == 4, labels
    assert s.redraws >= 0
    # Exhausted: a fifth trial may repeat (after max_redraws), and must not hang or fail.
    more = run(s, 1)
    assert more[0] in labels


def test_an_errored_trial_is_told_to_optuna_as_a_penalty_not_a_failure():
    s = make()
    config = s.suggest("t0")
    s.on_trial_complete("t0", result=None, error=True)  # crashed, timed out, out of memory
    (trial,) = s._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == list(PENALTY.values())
    assert s._known[config_key(config)] == PENALTY  # a repeat of it is answered, not re-run


def test_repeats_are_told_to_optuna_with_the_known_result():
    s = make(seed=3)
    run(s, 4)
    study = s._ot_study
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 + s.redraws  # each redraw is a completed Optuna trial with known values
