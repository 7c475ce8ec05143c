"""The search algorithm: Ray Tune's OptunaSearch, taught not to measure a config twice.

TPE on a small categorical space keeps re-proposing configs it has already seen (in a
24-trial resnet50 search, about a quarter of the trials were repeats). A repeat costs a
whole trial and tells the sampler nothing new. `DedupOptunaSearch` answers a repeat from
the first measurement instead: it tells Optuna the known result for the new Optuna trial
(so the sampler's model is exactly as if it had been re-measured) and asks again, up to
`max_redraws` times; after that it lets the repeat through (the space is exhausted).

A trial that errored (raised, crashed, timed out, ran out of memory) is told to Optuna as
a completed trial with the `penalty` figures, not as FAIL: TPE ignores failed trials and
would keep proposing the same broken config; a penalty steers it away.

It relies on two attributes of `OptunaSearch` in ray 2.60 (`_ot_trials`,
`_completed_trials`); ray is pinned in pyproject.toml and the test suite covers this path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.search.optuna import OptunaSearch


class DedupOptunaSearch(OptunaSearch):
    def __init__(
        self,
        *args: Any,
        key: Callable[[dict[str, Any]], str],
        penalty: dict[str, float],
        max_redraws: int = 50,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._penalty = penalty
        self._key = key
        self._max_redraws = max_redraws
        self._known: dict[str, dict[str, Any]] = {}  # config key -> the result it got
        self._pending: dict[str, str] = {}  # Tune trial id -> config key
        self.redraws = 0

    def remember(self, key: str, result: dict[str, float]) -> None:
        """A config measured before (a resumed search): answer repeats of it from `result`."""
        self._known[key] = {m: result[m] for m in self.metric}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for attempt in range(self._max_redraws + 1):
            config = super().suggest(trial_id)
            if not isinstance(config, dict):
                return config  # None (wait) or Searcher.FINISHED
            k = self._key(config)
            if k not in self._known or attempt == self._max_redraws:
                self._pending[trial_id] = k  # new, or the space looks exhausted: measure it
                return config
            # Seen before: give Optuna the known result for this Optuna trial, then ask again.
            super().on_trial_complete(trial_id, result=self._known[k])
            self._completed_trials.discard(trial_id)
            self._ot_trials.pop(trial_id, None)
            self.redraws += 1
        raise AssertionError("unreachable")

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        k = self._pending.pop(trial_id, None)
        if error or not result or not all(m in result for m in self.metric):
            result, error = dict(self._penalty), False
        if k is not None:
            self._known[k] = {m: result[m] for m in self.metric}
        super().on_trial_complete(trial_id, result=result, error=error)
