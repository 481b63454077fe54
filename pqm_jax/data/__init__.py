"""Speech data: corpus readers, speaker splits, synthetic speakers, batching.

Modules (import the one you need; nothing is imported eagerly):
  issues      InputReport: warnings + counts for bad input, strict mode
  audio       load / resample / validate audio (soundfile + scipy)
  text        digit words, ASCII clean-up, seeded sentences, LibriSpeech transcript files
  corpora     Entry / Utterance types and the shared loader
  librispeech, tedlium, fsdd, manifest, hf   one reader per corpus format
  speakers    per-speaker adapt/dev/test splits, speaker-disjoint sets
  synth       espeak-ng synthetic speakers -> manifest corpus (`python -m pqm_jax.data.synth`)
  espeak      the ctypes binding to libespeak-ng (espeakng-loader) used by synth
  features    log-mel features (Whisper)
  batching    bucketing, pad + mask, [speaker, batch, ...] batches, prefetch, host sharding
"""
