"""Stopping a search with a signal, in any phase, without losing what it measured.

- During the trials, `Interrupt` turns SIGINT/SIGTERM into a clean stop of Tune (a
  Stopper's `stop_all`): the running trial ends, every finished trial is kept; a second
  signal stops at once. Tune's own SIGINT handler is turned off
  (TUNE_DISABLE_SIGINT_HANDLER) because it would swallow the signal.
- Everywhere else (reference, nightly check, confirmation, outputs), `SigtermAsInterrupt`
  makes SIGTERM raise `Stopped`, a KeyboardInterrupt, as Ctrl-C does, so that
  `search.run.run_search` can close the parent run and save the state for `--resume` instead of
  the process ending with the signal's default action. `ray.init` installs its own SIGTERM
  handler (`sys.exit`), so `catch_sigterm()` is called again after it.
"""

from __future__ import annotations

import signal
import threading
from types import TracebackType
from typing import Any

from tuner.core.console import say


class Stopped(KeyboardInterrupt):
    """The search was stopped by the signal `name`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Interrupt:
    """The trial phase's handler (see the module docstring)."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __enter__(self) -> Interrupt:
        self._old = {sig: signal.signal(sig, self._on) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _on(self, signum: int, frame: object) -> None:
        if self.signal is not None:
            raise Stopped(self.signal)
        self.signal = signal.Signals(signum).name
        say(f"\n{self.signal}: stopping the search; finished trials are kept (send it again to stop at once)")

    def stopper(self) -> Any:
        from ray.tune.stopper import Stopper

        outer = self

        class _Stop(Stopper):
            def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
                return False

            def stop_all(self) -> bool:
                return outer.signal is not None

        return _Stop()


_last_sigterm = threading.Event()  # code in between (ray.get) may re-raise Stopped as a plain KeyboardInterrupt


def _raise_stopped(signum: int, frame: object) -> None:
    _last_sigterm.set()
    raise Stopped("SIGTERM")


def catch_sigterm() -> None:
    """SIGTERM raises `Stopped` from now on (main thread only: where handlers can be set)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_stopped)


class SigtermAsInterrupt:
    """`catch_sigterm()` for the duration of a search; the previous handler afterwards."""

    def __enter__(self) -> SigtermAsInterrupt:
        _last_sigterm.clear()
        self._old = signal.getsignal(signal.SIGTERM)
        catch_sigterm()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)

    @staticmethod
    def name(e: KeyboardInterrupt) -> str:
        """The signal that stopped the search: SIGINT unless we know better."""
        if isinstance(e, Stopped):
            return e.name
        return "SIGTERM" if _last_sigterm.is_set() else "SIGINT"
