"""ESPnet-style Conformer AED with a CTC head, as pure functions.

Modules: model (encode/decode/init), blocks (macaron feed-forward, convolution module), relpos
(relative positional attention), ctc (CTC head and losses), loss (the joint training loss),
inputs (SpecAugment), decoding (joint CTC/attention beam search), espnet (ESPnet checkpoints),
family (the registered `Family`).
"""
