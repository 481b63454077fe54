"""Blocks shared by every family: multi-head attention with KV caches, dropout, activations."""
