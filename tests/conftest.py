"""Test-session set-up shared by every test module.

Eight fake CPU devices let sharding tests build real meshes on a laptop or a 2-core CI machine;
it must be set before jax is imported anywhere.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
