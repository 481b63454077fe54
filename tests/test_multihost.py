"""The multi-process helpers on one process (the two-process run is tests/run/test_multiprocess)."""

import jax
import numpy as np

from pqm_jax import multihost, sharding


def test_interleave_undoes_round_robin_shares():
    items = list(range(11))
    for p in (1, 2, 3):
        parts = [items[i::p] for i in range(p)]
        assert multihost.interleave(parts, len(items)) == items


def test_one_process_needs_no_collective():
    assert multihost.primary() and list(range(5))[multihost.share()] == list(range(5))
    assert multihost.gather_json({"a": [1, "x"]}) == [{"a": [1, "x"]}]
    assert multihost.lost_peer(RuntimeError("Gloo all-reduce failed")) is None
    assert multihost.start_watchdog(1.0) is None
    multihost.barrier("nothing to wait for")


def test_put_and_globalize_keep_one_process_values():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2), devices=jax.devices()[:2])
    x = np.arange(8.0).reshape(4, 2)
    s = sharding.leading(mesh)
    placed = sharding.put({"x": x}, {"x": s})["x"]
    assert placed.sharding == s
    np.testing.assert_array_equal(sharding.to_host(placed), x)
    assert sharding.globalize((x,), (s,))[0] is x
