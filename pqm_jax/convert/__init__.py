"""Checkpoint readers and writers: foreign formats <-> the Whisper params pytree.

Modules (import the one you need; nothing is imported eagerly):
  hf    Hugging Face `WhisperForConditionalGeneration` (safetensors, sharded, pytorch_model.bin)
  ct2   CTranslate2 `model.bin` (own pure-numpy reader/writer; float32/16, bfloat16, int8, int16)
  peft  LoRA adapters <-> Hugging Face PEFT adapter folders
"""
