"""Bad-input bookkeeping: every problem is warned about, counted, or (strict) raised.

A reader never drops data silently: each problem found in the input goes through
`InputReport.issue`, which names the file and what was done about it (skipped, resampled,
truncated, ...), counts it, and either emits an `InputWarning` or, in strict mode, raises
`InputError`. `InputReport.summary()` gives the counts at the end of a run.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import warnings

import pqm_jax


class InputWarning(pqm_jax.PQMWarning):
    """A problem in the input data that was handled (skipped, resampled, truncated, ...)."""


class InputError(ValueError):
    """A problem in the input data, raised instead of warned about in strict mode."""


class Kind(enum.StrEnum):
    """What was wrong with the input."""

    CORRUPT_AUDIO = "corrupt audio"
    EMPTY_AUDIO = "empty audio"
    SAMPLE_RATE = "unexpected sample rate"
    MULTICHANNEL = "multi-channel audio"
    MISSING_AUDIO = "transcript without audio"
    MISSING_TRANSCRIPT = "audio without transcript"
    EMPTY_TRANSCRIPT = "empty transcript"
    NON_ASCII = "non-ASCII transcript"
    TOO_LONG = "utterance too long"
    BAD_RECORD = "malformed record"
    FEW_UTTERANCES = "too few utterances for a split"


class Action(enum.StrEnum):
    """What was done about it."""

    SKIPPED = "skipped"
    RESAMPLED = "resampled"
    TRUNCATED = "truncated"
    DOWNMIXED = "downmixed to mono"
    TRANSLITERATED = "transliterated to ASCII"
    KEPT = "kept as is"


@dataclasses.dataclass(frozen=True)
class Issue:
    """One recorded problem."""

    kind: Kind
    action: Action
    source: str
    detail: str = ""

    def message(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind.value}: {self.source}{extra}; {self.action.value}"


class InputReport:
    """Collects input problems for one run.

    Args:
      strict: raise `InputError` at the first problem instead of warning.
      max_warnings_per_kind: after this many warnings of one kind, further ones are only
        counted (one extra warning says so); `None` warns about every one.
      keep: how many `Issue` records to keep for inspection (counts are always exact).
    """

    def __init__(
        self, *, strict: bool = False, max_warnings_per_kind: int | None = 100, keep: int = 10_000
    ) -> None:
        self.strict = strict
        self.max_warnings_per_kind = max_warnings_per_kind
        self.keep = keep
        self.counts: collections.Counter[tuple[Kind, Action]] = collections.Counter()
        self.issues: list[Issue] = []
        self._warned: collections.Counter[Kind] = collections.Counter()

    def issue(self, kind: Kind, action: Action, source: object, detail: str = "") -> None:
        """Records one problem: raises in strict mode, otherwise warns and counts."""
        item = Issue(kind=kind, action=action, source=str(source), detail=detail)
        if self.strict:
            raise InputError(item.message().rsplit(";", 1)[0] + " (strict mode)")
        self.counts[(kind, action)] += 1
        if len(self.issues) < self.keep:
            self.issues.append(item)
        self._warned[kind] += 1
        limit = self.max_warnings_per_kind
        if limit is None or self._warned[kind] <= limit:
            warnings.warn(item.message(), InputWarning, stacklevel=2)
        elif self._warned[kind] == limit + 1:
            warnings.warn(
                f"{kind.value}: more than {limit} cases; further ones are only counted",
                InputWarning,
                stacklevel=2,
            )

    def count(self, kind: Kind | None = None) -> int:
        """Number of recorded problems (of one kind, or all)."""
        return sum(n for (k, _), n in self.counts.items() if kind is None or k == kind)

    def summary(self) -> str:
        """One line per (kind, action) with its count, or 'no input problems'."""
        if not self.counts:
            return "no input problems"
        lines = [f"{n:6d}  {k.value}: {a.value}" for (k, a), n in sorted(self.counts.items())]
        return f"{self.count()} input problems\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return f"InputReport(strict={self.strict}, problems={self.count()})"


def default(report: InputReport | None) -> InputReport:
    """The given report, or a fresh non-strict one."""
    return InputReport() if report is None else report
