"""The tuner's exception hierarchy, and the exit codes every command shares.

User mistakes (`SpaceError`, `ConfigError`) are reported by the CLI as one paragraph
with exit code 2 and no traceback. `VariantUnsupported` is an *expected* per-trial
failure: the trial is recorded as `failed` (or `infeasible`) and the search goes on.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0  # done: a recommendation was made, the service stopped, the figures were measured
EXIT_NO_RESULT = 1  # the search ran but nothing finished ok (or a measured variant failed)
EXIT_USAGE = 2  # bad input: the message names the file, key or flag and what is allowed
EXIT_REGRESSION = 3  # nightly: a regression was found (cron/CI alert on this)
EXIT_LOCKED = 75  # nightly: another nightly run holds the lock (EX_TEMPFAIL: try again later)
EXIT_INTERRUPTED = 130  # interrupted (a search resumes with --resume)


class TunerError(Exception):
    """Base class of every error the tuner raises on purpose."""


class SpaceError(TunerError):
    """A search-space file is malformed: names the file, the key and what is allowed."""


class ConfigError(TunerError):
    """A flag, variant file or environment setting is invalid or conflicts with another."""


class VariantUnsupported(TunerError):
    """This variant cannot be built or run here (an expected failure, recorded, not raised)."""


class TrackingError(TunerError):
    """The MLflow tracking store cannot be reached or written."""


def last_line(text: str, limit: int = 500) -> str:
    """The last non-empty line of an error text someone else formatted (a Ray error, a
    traceback): where Python and Ray put the cause."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else ""


def one_line(e: BaseException) -> str:
    """`Type: first line of the message` (at most 500 characters): a failed trial's `error`."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:500]}" if lines else type(e).__name__
