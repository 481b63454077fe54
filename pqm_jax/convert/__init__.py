"""Adapter formats: `peft` reads and writes Hugging Face PEFT LoRA folders.

Model checkpoint formats live with their family (`models.whisper.ct2`, `models.whisper.hf`,
`models.conformer.espnet`).
"""
