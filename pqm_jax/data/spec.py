"""The data part of a run configuration: where utterances come from and how speakers are split."""

from __future__ import annotations

import dataclasses

from pqm_jax import errors
from pqm_jax.data import augment, sources, synth

# What synthetic voices read.
TEXTS = ("sentences", "digits")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where utterances come from and how speakers are split.

    Attributes:
      source: a registered source (`sources.names()`): "synth" (espeak-ng voices), "fsdd",
        "librispeech", "tedlium" or "manifest".
      root: corpus folder (fsdd, librispeech subset, TED-LIUM folder with stm/ and sph/) or
        manifest file; "" = the default (synth: rendered into the workdir; fsdd: shared data).
      si_root: the speaker-independent pool (LibriSpeech train-clean-100, TED-LIUM train, a
        manifest); "" = take it from `root` (all speakers not in `speakers`).
      speakers: target speakers (stage 3); () = every speaker of `root`.
      si_speakers: speakers of the stage-2 pool; () = every non-target speaker available.
      max_si_speakers, max_si_utterances: caps on the stage-2 pool (0 = none), seeded choice.
      si_dev_utterances: stage-2 dev utterances held out of the pool.
      split: adapt/dev/test fractions of each target speaker (LibriSpeech, TED-LIUM, manifest).
      voices, counts: synth target voices and their (adapt, dev, test) utterances.
      si_voices, si_counts: synth pool: number of sampled voices and (train, dev) per voice.
      min_words, max_words: synth sentence lengths (pick them to fit `audio_window_s`).
      transcripts: sentence source for synth (LibriSpeech *.trans.txt); "" = the shared
        dev-clean text when present, else generated sentences.
      fsdd_counts: FSDD (train, dev, test) utterances per speaker (reference: 80, 20, 50).
      fsdd_pool_counts: (train, dev) joined utterances of each FSDD speaker in the stage-2
        pool (`si_speakers`): train from the adaptation takes, dev from the test takes;
        (0, 0) = the protocol's own adapt / dev parts. Recordings are reused in new orders once
        each has been used, so a count above the takes' quarter is itself an augmentation.
      text: what synthetic voices read: "sentences" (LibriSpeech text) or "digits" (runs of
        four digit words, as FSDD's joined utterances).
      augment: what augmented copies of the pool's training utterances get (`augment.KINDS`:
        "speed", "narrowband", "reverb", "noise"); dev parts and targets are never changed.
      augment_copies: augmented copies per pool training utterance (0 = none).
      augment_speeds, augment_snr_db, augment_rt60_s, augment_narrowband_hz: their ranges.
      seed: data seed (voices, splits, sentence choice).
      strict: stop at the first bad input item (corrupt audio, empty transcript, ...) with an
        `InputError` naming it, instead of warning, counting and skipping it.
    """

    source: str = "synth"
    root: str = ""
    si_root: str = ""
    speakers: tuple[str, ...] = ()
    si_speakers: tuple[str, ...] = ()
    max_si_speakers: int = 0
    max_si_utterances: int = 0
    si_dev_utterances: int = 32
    split: tuple[float, float, float] = (0.4, 0.2, 0.4)
    voices: tuple[str, ...] = synth.REFERENCE_VOICES
    counts: tuple[int, int, int] = (48, 12, 30)
    si_voices: int = 8
    si_counts: tuple[int, int] = (24, 4)
    min_words: int = 6
    max_words: int = 30
    transcripts: str = ""
    fsdd_counts: tuple[int, int, int] = (80, 20, 50)
    fsdd_pool_counts: tuple[int, int] = (0, 0)
    text: str = "sentences"
    augment: tuple[str, ...] = ()
    augment_copies: int = 0
    augment_speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    augment_snr_db: tuple[float, float] = (10.0, 30.0)
    augment_rt60_s: tuple[float, float] = (0.1, 0.5)
    augment_narrowband_hz: float = 4000.0
    seed: int = 0
    strict: bool = False

    def __post_init__(self):
        if self.source not in sources.names():
            raise errors.ConfigError(
                f"data.source={self.source!r} is not one of {', '.join(sources.names())}"
            )
        if self.text not in TEXTS:
            raise errors.ConfigError(f"data.text={self.text!r} is not one of {', '.join(TEXTS)}")
        try:
            self.augment_policy()
        except ValueError as e:
            raise errors.ConfigError(str(e)) from None
        if len(self.split) != 3 or min(self.split) < 0 or sum(self.split) <= 0:
            raise errors.ConfigError(
                f"data.split must be 3 non-negative fractions, got {self.split}"
            )

    def augment_policy(self) -> augment.Policy:
        """The augmentation of the pool's training part (`augment.copies`)."""
        return augment.Policy(
            kinds=tuple(self.augment),
            copies=self.augment_copies,
            speeds=tuple(self.augment_speeds),
            snr_db=tuple(self.augment_snr_db),
            rt60_s=tuple(self.augment_rt60_s),
            narrowband_hz=self.augment_narrowband_hz,
            seed=self.seed,
        )
