"""Text: tokenizers, normalisers for scoring, transcript helpers.

Modules (import the one you need):
  whisper_tokenizer  Whisper's byte-level BPE tokenizer (special ids, prompts, suppression)
  char_tokenizer     the Conformer's character vocabulary (ESPnet token list) and tokenizer
  normalize          Whisper's English and basic normalisers; spoken-digit normaliser
  transcripts        digit words, ASCII transliteration, transcript files, seeded sentences
"""
