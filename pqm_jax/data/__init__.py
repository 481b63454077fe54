"""Speech data: corpus sources, speaker splits, synthetic speakers, features, batching.

Modules (import the one you need; nothing is imported eagerly):
  sources     the registry of corpus sources (`data.source`); each reader registers one
  spec        DataSpec: the data part of a run configuration
  corpus      Corpus (target splits + stage-2 pool), `build`, helpers readers share
  issues      InputReport: warnings + counts for bad input, strict mode
  audio       load / resample / validate audio (soundfile + scipy)
  corpora     Entry / Utterance types, transcript checks and the shared loader
  librispeech, tedlium, fsdd, manifest, synth   one reader (and source) per corpus format
  hf          Hugging Face `datasets` (decoded with soundfile)
  speakers    per-speaker adapt/dev/test splits, speaker-disjoint sets
  espeak      the ctypes binding to libespeak-ng (espeakng-loader) used by synth
  features    log-mel features (Whisper)
  feature_store  log-mel windows cached on disk per (utterance, window, mel bins)
  batching    bucketing, pad + mask, [speaker, batch, ...] batches, prefetch, host sharding
"""
