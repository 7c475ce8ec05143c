"""DedupOptunaSearch: the real Ray searcher class driving a real Optuna study (no Ray runtime)."""

from __future__ import annotations

import optuna

from tuner.config.space import SearchSpace
from tuner.core.schema import PENALTY, SAMPLER_OBJECTIVES
from tuner.core.variant import config_key
from tuner.search.choices import all_points, feasible_choices, space_function
from tuner.search.sampling import DedupOptunaSearch, initial_points

SMALL = feasible_choices(SearchSpace.model_validate(
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
), cores=1, device="cpu", fp16_native=False, bf16_native=True)
METRICS = list(SAMPLER_OBJECTIVES)


ONE = feasible_choices(SearchSpace.model_validate(
    {
        "dimensions": {
            "quantization": ["none"],
            "precision": ["fp32"],
            "batch_size": [1],
            "threads": [1],
            "compile": ["eager"],
            "layout": ["contiguous"],
        }
    }  # fmt: skip
), cores=1, device="cpu", fp16_native=False, bf16_native=False)  # the baseline alone
BASELINE = "fp32 bs1 t1 eager nchw"


def make(choices=SMALL, seed=0, max_redraws=50, feasible=None):
    return DedupOptunaSearch(
        feasible=feasible,
        key=config_key,
        space=space_function(choices),
        metric=METRICS,
        mode=list(SAMPLER_OBJECTIVES.values()),
        points_to_evaluate=initial_points(choices, 4),
        penalty=PENALTY,
        max_redraws=max_redraws,
        candidates=all_points(choices),
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
    )


def figures(t):
    return dict(zip(METRICS, (10.0 + t, 5.0, 1.0), strict=True))


def run(searcher, n, start=0):
    labels = []
    for t in range(start, start + n):
        config = searcher.suggest(f"t{t}")
        labels.append(config_key(config))
        searcher.on_trial_complete(f"t{t}", result=figures(t))
    return labels


def completed(searcher):
    return [t for t in searcher._ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_every_config_is_measured_once_until_the_space_is_exhausted():
    s = make()  # seed 0; for seeds where TPE misses a config, see the xfail test below
    labels = run(s, 4)  # the space has exactly 4 configs
    assert labels[0] == BASELINE  # the baseline still comes first
    assert len(set(labels)) == 4, labels
    before = s.redraws
    # Exhausted: every proposal is a repeat. Each further trial is re-proposed exactly
    # `max_redraws` times, then let through (no hang, no failure, no fifth config invented).
    more = run(s, 2, start=4)
    assert set(more) <= set(labels)
    assert s.redraws == before + 2 * 50
    assert len(completed(s)) == 6 + s.redraws  # every redraw is a completed Optuna trial


def test_a_repeat_is_redrawn_and_told_to_optuna_with_the_first_result():
    s = make(ONE, max_redraws=3)
    assert run(s, 1) == [BASELINE]
    assert s.redraws == 0
    # One config, a second trial: the sampler must re-propose it; each repeat is answered
    # from the first measurement (never measured), and after max_redraws it goes through.
    assert run(s, 1, start=1) == [BASELINE]
    assert s.redraws == 3
    done = completed(s)
    assert len(done) == 2 + 3
    assert [config_key(t.params) for t in done] == [BASELINE] * 5
    first, *redrawn, second = done
    assert first.values == list(figures(0).values())
    assert all(t.values == first.values for t in redrawn)  # the known result, not a new one
    assert second.values == list(figures(1).values())


def test_a_config_remembered_from_a_resumed_search_is_not_measured_again():
    s = make()
    s.remember(BASELINE, {**figures(0), "extra": 1.0})
    first = config_key(s.suggest("t0"))
    # The enqueued baseline was proposed first; it is known, so it is answered and redrawn.
    assert first != BASELINE and s.redraws >= 1
    redrawn = completed(s)
    assert len(redrawn) == s.redraws
    assert all(config_key(t.params) == BASELINE and t.values == list(figures(0).values()) for t in redrawn)


def test_an_errored_trial_is_told_to_optuna_as_a_penalty_not_a_failure():
    s = make()
    config = s.suggest("t0")
    s.on_trial_complete("t0", result=None, error=True)  # crashed, timed out, out of memory
    (trial,) = s._ot_study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == list(PENALTY.values())
    assert s._known[config_key(config)] == PENALTY  # a repeat of it is answered, not re-run


def test_a_result_missing_an_objective_is_a_penalty():
    s = make()
    config = s.suggest("t0")
    partial = dict(list(figures(0).items())[:-1])  # e.g. a trial that reported no latency
    s.on_trial_complete("t0", result=partial)
    (trial,) = completed(s)
    assert trial.values == list(PENALTY.values())
    assert s._known[config_key(config)] == PENALTY


def test_a_repeat_goes_through_only_after_max_redraws_and_each_redraw_carries_its_known_result():
    """Whatever the sampler proposes, per trial: a new config after 0..max_redraws redraws
    (max_redraws + 1 when the limit was hit and an untried config was enqueued instead), or,
    once the space is exhausted, a known one after exactly max_redraws; every redraw is a
    completed Optuna trial with the result known for its own config."""
    for seed in range(4):
        s = make(seed=seed, max_redraws=10)
        labels = []
        for t in range(6):  # 4 configs, 6 trials: at least two trials' worth of repeats
            before, known = s.redraws, dict(s._known)
            label = config_key(s.suggest(f"t{t}"))
            drawn = s.redraws - before
            assert (drawn == 10) if label in labels else (0 <= drawn <= 11), (seed, t, label, drawn)
            assert (label in labels) == (t >= 4), (seed, t, label)  # no repeat before exhaustion
            done = completed(s)
            for trial in done[len(done) - drawn :]:  # this trial's redraws: known configs, with their result
                key = config_key(trial.params)
                assert key in known and trial.values == list(known[key].values()), (seed, key)
            labels.append(label)
            s.on_trial_complete(f"t{t}", result=figures(t))
        assert s.redraws >= 2 * 10, seed  # the space is exhausted after 4 trials
        assert len(completed(s)) == 6 + s.redraws


def test_no_config_is_measured_twice_before_the_space_is_exhausted_whatever_the_seed():
    for seed in range(8):
        labels = run(make(seed=seed), 4)
        assert len(set(labels)) == 4, (seed, labels)


def _not_bf16_batch_2(config):  # a stand-in pair rule, as `ort + bf16` is for the real space
    return not (config.get("precision") == "bf16" and config.get("batch_size") == 2)


def test_a_pair_that_is_not_a_variant_is_never_measured_and_costs_no_trial():
    for seed in range(4):
        s = make(seed=seed, max_redraws=10, feasible=_not_bf16_batch_2)
        labels = run(s, 5)  # 3 feasible configs, then the space is exhausted: repeats
        assert "bf16 bs2 t1 eager nchw" not in labels, (seed, labels)
        assert len(set(labels[:3])) == 3 and set(labels[3:]) <= set(labels[:3]), (seed, labels)
        failed = [t for t in s._ot_study.trials if t.state == optuna.trial.TrialState.FAIL]
        assert len(failed) == s.rejected and all(config_key(t.params) == "bf16 bs2 t1 eager nchw" for t in failed)


def test_a_space_with_no_variant_at_all_finishes_instead_of_looping():
    s = make(ONE, max_redraws=3, feasible=lambda config: False)
    assert s.suggest("t0") == "FINISHED"
    assert s.rejected == 4  # max_redraws turned away, then the last draw
