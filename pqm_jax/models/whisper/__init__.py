"""Whisper (encoder-decoder, HF names) as pure functions.

Modules: model (encode/decode/init), decoding (greedy and beam search with KV cache, per-utterance
adapter banks), ct2 (CTranslate2 model.bin reader/writer), hf (Hugging Face checkpoints),
family (the registered `Family`).
"""
