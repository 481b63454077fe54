"""Fixtures for tests and benchmarks: tiny random models and batches (`toy`). Not a real model."""
