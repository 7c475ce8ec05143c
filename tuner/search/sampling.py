"""Sampling: the Optuna define-by-run space built from the feasible choices, the first
points (baseline, enqueued configs, probes), and Ray Tune's OptunaSearch taught not to
measure a config twice.

TPE on a small categorical space keeps re-proposing configs it has already seen (in a
24-trial resnet50 search, about a quarter of the trials were repeats). A repeat costs a
whole trial and tells the sampler nothing new. `DedupOptunaSearch` answers a repeat from
the first measurement instead: it tells Optuna the known result for the new Optuna trial
(so the sampler's model is exactly as if it had been re-measured) and asks again, up to
`max_redraws` times. Each answer reinforces the repeat in TPE's model, so TPE can get stuck
on it while configs are still untried: at the limit, the first untried point of the space
(`all_points`) is enqueued instead. Only when none is left does a repeat go through.

Some pairs of values are not a variant at all: ONNX Runtime has no bf16 on the CPU,
OpenVINO and ONNX Runtime take NCHW input, the THROUGHPUT hint needs a batch to split
(each runtime's declaration, search/choices.py). `define_by_run` never draws one (its
parameters are conditional on the compile mode). Every draw is checked all the same: one that is not a
variant is told to Optuna as FAIL and drawn again, at no trial's cost. (Relying on that
alone was tried: TPE ignores FAIL trials, kept proposing the pairs next to its best configs,
hit the redraw limit on most guided trials of a resnet50 search, and the untried-config
fallback then enumerated fp32 eager configs.)

A trial that errored (raised, crashed, timed out, ran out of memory) is told to Optuna as
a completed trial with the `penalty` figures, not as FAIL: TPE ignores failed trials and
would keep proposing the same broken config; a penalty steers it away.

It relies on two attributes of `OptunaSearch` in ray 2.60 (`_ot_trials`,
`_completed_trials`); ray is pinned in pyproject.toml and the test suite covers this path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tuner.core.variant import BASELINE_FIELDS, config_key
from tuner.search.choices import baseline_point, feasible, in_space, to_params


class DedupOptunaSearch(OptunaSearch):
    def __init__(
        self,
        *args: Any,
        key: Callable[[dict[str, Any]], str],
        penalty: dict[str, float],
        max_redraws: int = 50,
        candidates: list[dict[str, Any]] | None = None,
        feasible: Callable[[dict[str, Any]], bool] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._penalty = penalty
        self._key = key
        self._feasible = feasible or (lambda config: True)
        self._max_redraws = max_redraws
        # Every point of the (finite) space, as Optuna params (`all_points`): when TPE keeps
        # re-proposing measured configs, the next untried one of these is enqueued instead.
        self._candidates = candidates or []
        self._known: dict[str, dict[str, Any]] = {}  # config key -> the result it got
        self._pending: dict[str, str] = {}  # Tune trial id -> config key
        self.redraws = 0
        self.rejected = 0  # infeasible pairs drawn and turned away

    def remember(self, key: str, result: dict[str, float]) -> None:
        """A config measured before (a resumed search): answer repeats of it from `result`."""
        self._known[key] = {m: result[m] for m in self.metric}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        drawn = 0  # repeats answered and infeasible pairs turned away for this trial
        while True:
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config  # None (wait) or Searcher.FINISHED
            k = self._key(config) if self._feasible(config) else None
            if k is not None and k not in self._known:
                self._pending[trial_id] = k  # a new config: measure it
                return config
            if drawn >= self._max_redraws:
                untried = self._untried()
                if untried is None and k is not None:
                    self._pending[trial_id] = k  # the space is exhausted: measure the repeat again
                    return config
                # Each redraw told TPE the repeat's result once more (or left the pair that is
                # not a variant unexplored), so it keeps coming back to it: turn this one away
                # too and ask for a config directly: an untried one, or, with the space
                # exhausted, a measured one to measure again.
                target = untried or next((c for c in self._candidates if self._feasible(c)), None)
                self._turn_away(trial_id, k)
                if target is None:
                    return Searcher.FINISHED  # type: ignore[return-value]  # no variant in the space
                assert self._ot_study is not None  # set up by the first suggest()
                self._ot_study.enqueue_trial(target)
                continue
            self._turn_away(trial_id, k)
            drawn += 1

    def _turn_away(self, trial_id: str, key: str | None) -> None:
        """A repeat (`key`: answered with its known result) or a pair that is not a variant
        (None: told as FAIL, which TPE ignores); either way it is not measured."""
        if key is None:
            self._reject(trial_id)
        else:
            self._answer(trial_id, key)

    def _reject(self, trial_id: str) -> None:
        """Tell Optuna this draw failed (infeasible pair); it is not measured."""
        super().on_trial_complete(trial_id, error=True)
        self._completed_trials.discard(trial_id)
        self._ot_trials.pop(trial_id, None)
        self.rejected += 1

    def _answer(self, trial_id: str, key: str) -> None:
        """Complete this Optuna trial with the result `key` already got; it is not measured."""
        super().on_trial_complete(trial_id, result=self._known[key])
        self._completed_trials.discard(trial_id)
        self._ot_trials.pop(trial_id, None)
        self.redraws += 1

    def _untried(self) -> dict[str, Any] | None:
        """The first candidate neither measured nor being measured, if any."""
        busy = set(self._known) | set(self._pending.values())
        return next((c for c in self._candidates if self._feasible(c) and self._key(c) not in busy), None)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        k = self._pending.pop(trial_id, None)
        if error or not result or not all(m in result for m in self.metric):
            result, error = dict(self._penalty), False
        if k is not None:
            self._known[k] = {m: result[m] for m in self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)


# Families that often win on CPUs, tried right after the baseline so that a small budget
# still sees each kind of speedup once (Optuna's enqueue_trial; TPE takes over after them).
# First one int8 config per runtime (FX TorchScript, OpenVINO + NNCF, PT2E inductor, ONNX
# Runtime QDQ), so that the sampler has seen every runtime early; then float families.
PROBES: tuple[dict[str, Any], ...] = (  # flat variants (Variant fields), as search.enqueue
    {"quantization": "static_int8", "compile": "torchscript", "layout": "contiguous"},
    # OpenVINO's CPU plugin runs an int8 model's float layers in bf16 by default where the CPU
    # has it (faster than f32 here); fp32 where it has not.
    {"quantization": "static_int8", "compile": "openvino", "precision": "bf16", "layout": "contiguous"},
    {"quantization": "static_int8", "compile": "inductor", "layout": "contiguous"},
    {"quantization": "static_int8", "compile": "onnxruntime", "layout": "contiguous"},
    # fp32 on the other runtimes, for models whose int8 (or bf16) loses too much accuracy
    {"precision": "fp32", "compile": "openvino", "layout": "contiguous"},
    {"precision": "fp32", "compile": "onnxruntime", "layout": "contiguous"},
    {"precision": "bf16", "compile": "inductor", "layout": "channels_last"},
    {"precision": "fp32", "compile": "torchscript", "layout": "channels_last"},
    {"precision": "bf16", "compile": "torchscript", "layout": "channels_last"},
    # A GPU only (elsewhere not in the space): CUDA graphs in half precision, what GPU users reach for
    {"precision": "fp16", "compile": "inductor_reduce_overhead", "layout": "channels_last"},
)
# For the throughput objective, OpenVINO int8 at a batch, with one stream and with the
# THROUGHPUT hint's several (on resnet50 here: 98 and 90-100 items/s, against 88 at batch 1),
# and ONNX Runtime fp32 at a batch, for models whose int8 is not accurate enough
# (mobilenet_v3_large, random-init: 346 items/s at batch 8, the best peer; a 16-trial search
# without this probe never drew it and picked 285).
THROUGHPUT_PROBES = (
    (
        {"quantization": "static_int8", "compile": "openvino", "precision": "bf16", "layout": "contiguous"},
        "batch_size",
        8,
    ),
    (
        {"quantization": "static_int8", "compile": "openvino_throughput", "precision": "bf16", "layout": "contiguous"},
        "batch_split",
        16,
    ),
    ({"precision": "fp32", "compile": "onnxruntime", "layout": "contiguous"}, "batch_size", 8),
)


def initial_points(
    choices: dict[str, list[Any]],
    trials: int,
    enqueue: list[dict[str, Any]] | tuple[()] = (),
    objective: str = "latency",
) -> list[dict[str, Any]]:
    """The baseline, then the space's `search.enqueue` configs, then up to a third of the
    budget of PROBES that this space and this hardware allow (batch 1, all threads), so that
    the sampler starts from diverse known-good points (every runtime from 16 trials on)."""
    base = baseline_point(choices)
    flat_base = {**BASELINE_FIELDS, "batch_size": 1, "threads": base["threads"]}
    points = [base]
    seen = {config_key(base)}
    for i, extra in enumerate(enqueue):
        flat = {**flat_base, **extra}
        if not feasible(flat):
            print(f"note: `search.enqueue[{i}]` {extra} is not a feasible variant: skipped")
            continue
        point = to_params(flat)
        outside = {k: v for k, v in point.items() if k not in choices or v not in choices[k]}
        if outside:  # e.g. a warm-start config from a space that has changed since
            print(f"note: `search.enqueue[{i}]` {extra} is not in this space on this hardware ({outside}): skipped")
            continue
        if config_key(point) not in seen:
            seen.add(config_key(point))
            points.append(point)
    probes = list(PROBES)
    if objective == "throughput":  # right after the first probe, the largest batch up to a cap
        for probe, key, cap in reversed(THROUGHPUT_PROBES):
            batches = [b for b in choices[key] if 2 <= b <= cap]
            if batches:
                probes.insert(1, {**probe, "batch_size": max(batches)})
    for probe in probes:
        if len(points) > trials // 3:
            break
        for flat in ({**flat_base, **probe}, {**flat_base, **probe, "precision": "fp32"}):  # bf16, else fp32
            params = to_params(flat) if feasible(flat) else None
            if params is not None and in_space(params, choices):
                if config_key(params) not in seen:
                    seen.add(config_key(params))
                    points.append(params)
                break
    return points
