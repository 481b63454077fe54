"""Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{take}.wav`, 8 kHz, one digit each.

The transcript is the digit as a word. `joined` builds longer utterances (several digits of one
speaker with a short silence between), and `reference_split` reproduces the PyTorch reference
setup: 4 digits joined with 0.15 s, adaptation from takes 5-49 (80 train + 20 dev utterances per
speaker), test from takes 0-4 (50 utterances per speaker), seed 0.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import zlib

import numpy as np

from pqm_jax import errors
from pqm_jax.data import corpora, corpus, issues, sources, speakers
from pqm_jax.text import transcripts as text

NATIVE_RATE = 8_000
_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Recording:
    """One FSDD file."""

    path: str
    digit: int
    speaker: str
    take: int


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The FSDD speaker-adaptation setup (defaults: the reference's)."""

    digits_per_utterance: int = 4
    gap_s: float = 0.15
    adapt_takes: tuple[int, int] = (5, 50)  # [first, last + 1)
    test_takes: tuple[int, int] = (0, 5)
    n_train: int = 80
    n_dev: int = 20
    n_test: int = 50
    seed: int = 0


def default_root() -> pathlib.Path | None:
    """`$PQM_SHARED_DATA/fsdd` if set, else the nearest `../shared/data/fsdd`; `None` if absent."""
    env = os.environ.get("PQM_SHARED_DATA")
    candidates = [pathlib.Path(env) / "fsdd"] if env else []
    here = pathlib.Path(__file__).resolve()
    candidates += [p / "shared" / "data" / "fsdd" for p in here.parents]
    return next((c for c in candidates if c.is_dir()), None)


def list_recordings(
    root: str | os.PathLike, *, report: issues.InputReport | None = None
) -> list[Recording]:
    """FSDD recordings under `root` (or `root/recordings`), sorted by speaker, digit, take.

    A `.wav` whose name does not parse as `{digit}_{speaker}_{take}` has no transcript: it is
    reported and skipped.
    """
    report = issues.default(report)
    root = pathlib.Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"FSDD folder {folder} is not a directory")
    out = []
    for path in sorted(folder.glob("*.wav")):
        m = _NAME.match(path.stem)
        if m is None:
            report.issue(
                issues.Kind.MISSING_TRANSCRIPT,
                issues.Action.SKIPPED,
                path,
                "name is not {digit}_{speaker}_{take}.wav",
            )
            continue
        out.append(Recording(str(path), int(m[1]), m[2], int(m[3])))
    return sorted(out, key=lambda r: (r.speaker, r.digit, r.take))


def single(recordings: list[Recording]) -> list[corpora.Entry]:
    """One entry per recording; text = the digit word, utt_id = the file stem."""
    return [
        corpora.Entry(
            utt_id=pathlib.Path(r.path).stem,
            speaker=r.speaker,
            text=text.DIGIT_WORDS[r.digit],
            segments=(corpora.Segment(r.path),),
            expected_rate=NATIVE_RATE,
        )
        for r in recordings
    ]


def joined(
    recordings: list[Recording],
    n_utterances: int,
    *,
    digits_per_utterance: int = 4,
    gap_s: float = 0.15,
    seed: int = 0,
    tag: str = "joined",
) -> list[corpora.Entry]:
    """`n_utterances` entries per speaker, each `digits_per_utterance` recordings of that speaker
    joined with `gap_s` seconds of silence.

    Recordings are drawn from successive seeded permutations of the speaker's pool, so each is
    used once before any is reused. Deterministic for (`seed`, `tag`, speaker); `tag` also
    prefixes the ids (`{speaker}-{tag}-{i:03d}`).
    """
    out = []
    for speaker, recs in corpora.by_speaker(recordings).items():
        rng = np.random.default_rng([seed, zlib.crc32(f"{tag}/{speaker}".encode())])
        need = n_utterances * digits_per_utterance
        passes = -(-need // len(recs))
        order = np.concatenate([rng.permutation(len(recs)) for _ in range(passes)])[:need]
        for i, chunk in enumerate(order.reshape(n_utterances, digits_per_utterance)):
            picked = [recs[j] for j in chunk]
            out.append(
                corpora.Entry(
                    utt_id=f"{speaker}-{tag}-{i:03d}",
                    speaker=speaker,
                    text=text.digits_to_words([r.digit for r in picked]),
                    segments=tuple(corpora.Segment(r.path) for r in picked),
                    gap_s=gap_s,
                    expected_rate=NATIVE_RATE,
                )
            )
    return out


def reference_split(
    root: str | os.PathLike | None = None,
    *,
    protocol: Protocol = Protocol(),
    report: issues.InputReport | None = None,
) -> dict[str, speakers.Split]:
    """Per-speaker adapt (train) / dev / test entries following `protocol`.

    Train and dev use disjoint recordings from the adaptation takes; test uses only the test
    takes. A speaker with fewer recordings than one utterance needs is reported and skipped.
    """
    report = issues.default(report)
    root = root if root is not None else default_root()
    if root is None:
        raise FileNotFoundError("FSDD not found: pass root or set PQM_SHARED_DATA")
    recs = list_recordings(root, report=report)
    out = {}
    k = protocol.digits_per_utterance
    for speaker, own in corpora.by_speaker(recs).items():
        adapt = [r for r in own if protocol.adapt_takes[0] <= r.take < protocol.adapt_takes[1]]
        test = [r for r in own if protocol.test_takes[0] <= r.take < protocol.test_takes[1]]
        if len(adapt) < k or len(test) < k:
            report.issue(
                issues.Kind.FEW_UTTERANCES,
                issues.Action.SKIPPED,
                f"FSDD speaker {speaker}",
                f"{len(adapt)} adaptation / {len(test)} test recordings, need {k} each",
            )
            continue
        kw = dict(digits_per_utterance=k, gap_s=protocol.gap_s, seed=protocol.seed)
        pool = joined(adapt, protocol.n_train + protocol.n_dev, tag="adapt", **kw)
        out[speaker] = speakers.Split(
            adapt=tuple(pool[: protocol.n_train]),
            dev=tuple(pool[protocol.n_train :]),
            test=tuple(joined(test, protocol.n_test, tag="test", **kw)),
        )
    return out


def build_corpus(spec, data_dir: pathlib.Path, report: issues.InputReport) -> corpus.Corpus:
    """The "fsdd" source: the reference protocol's splits; targets are `spec.speakers` (default:
    all but `spec.si_speakers`). The stage-2 pool joins two parts: the real speakers named in
    `spec.si_speakers` (their protocol adapt/dev parts, or `spec.fsdd_pool_counts` utterances)
    and `spec.si_voices` synthetic voices reading digits (none when 0). A target is never in the
    pool, and no recording of a target is (`corpus.check_no_leak`)."""
    n_train, n_dev, n_test = spec.fsdd_counts
    protocol = Protocol(n_train=n_train, n_dev=n_dev, n_test=n_test, seed=spec.seed)
    root = spec.root or default_root()
    if root is None:
        raise FileNotFoundError("FSDD not found: set data.root or PQM_SHARED_DATA")
    splits = reference_split(root, protocol=protocol, report=report)
    unknown = sorted((set(spec.speakers) | set(spec.si_speakers)) - set(splits))
    if unknown:
        raise errors.ConfigError(
            f"data.speakers / data.si_speakers name {', '.join(unknown)}, not FSDD speakers "
            f"under {root} (found: {', '.join(splits)})"
        )
    wanted = set(spec.speakers) or set(splits) - set(spec.si_speakers)
    targets = {s: splits[s] for s in sorted(wanted) if s in splits}
    pool_names = sorted(set(spec.si_speakers) - wanted)
    if any(spec.fsdd_pool_counts):
        si_train, si_dev = pool_utterances(root, pool_names, spec, report=report)
    else:
        si_train = speakers.pool_parts({s: splits[s] for s in pool_names}, "adapt")
        si_dev = speakers.pool_parts({s: splits[s] for s in pool_names}, "dev")
    if spec.si_voices > 0:  # synthetic voices reading digits, beside any real speakers
        from pqm_jax.data import synth  # espeak-ng only when this pool is asked for

        synth_train, synth_dev = synth.digit_pool(spec, data_dir, report)
        si_train, si_dev = [*si_train, *synth_train], [*si_dev, *synth_dev]
    return corpus.Corpus(targets=targets, si_train=tuple(si_train), si_dev=tuple(si_dev))


def pool_utterances(
    root, names: list[str], spec, *, report: issues.InputReport
) -> tuple[list[corpora.Entry], list[corpora.Entry]]:
    """`spec.fsdd_pool_counts` (train, dev) joined utterances of each pool speaker in `names`:
    train from the adaptation takes 5-49, dev from the test takes 0-4 (disjoint recordings)."""
    n_train, n_dev = spec.fsdd_pool_counts
    protocol = Protocol(seed=spec.seed)
    recs = [r for r in list_recordings(root, report=report) if r.speaker in set(names)]
    adapt = [r for r in recs if protocol.adapt_takes[0] <= r.take < protocol.adapt_takes[1]]
    test = [r for r in recs if protocol.test_takes[0] <= r.take < protocol.test_takes[1]]
    kw = dict(digits_per_utterance=protocol.digits_per_utterance, gap_s=protocol.gap_s)
    train = joined(adapt, n_train, seed=spec.seed, tag="pool", **kw) if n_train else []
    dev = joined(test, n_dev, seed=spec.seed, tag="pooldev", **kw) if n_dev and test else []
    return train, dev


SOURCE = sources.register(sources.Source(name="fsdd", build=build_corpus))
