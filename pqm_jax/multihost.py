"""What the processes of a multi-process run share: who writes, barriers, gathered results.

On one process every function is trivial (no collective runs), so library code calls them
unconditionally.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


def primary() -> bool:
    """True on the process that writes files shared by all (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process has reached `name` (nothing on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def share() -> slice:
    """This process's share of a list: every `process_count`-th item from its index."""
    return slice(jax.process_index(), None, jax.process_count())


def gather_json(value: object) -> list:
    """`value` (JSON-serialisable) of every process, in process order."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = multihost_utils.process_allgather(np.asarray([data.size], np.int64))
    padded = np.zeros(int(np.max(size)), np.uint8)
    padded[: data.size] = data
    every = multihost_utils.process_allgather(padded)
    n = np.asarray(size).reshape(-1)
    return [json.loads(bytes(every[p][: n[p]]).decode()) for p in range(jax.process_count())]


def interleave(parts: Sequence[Sequence], total: int) -> list:
    """Undoes `share`: item i came from process i % P at position i // P."""
    p = len(parts)
    return [parts[i % p][i // p] for i in range(total)]


_PREFIX = "pqm/heartbeat"


def start_watchdog(timeout_s: float, *, period_s: float = 1.0) -> threading.Thread | None:
    """Stops this process when another process of the run stops answering.

    A daemon thread publishes a counter for this process in the coordination service's
    key-value store every `period_s` and watches the others'. A process whose counter has not
    moved for `timeout_s` (killed, crashed, hung), or a coordinator that cannot be reached,
    ends this process with exit code 75 and a message saying how to resume: otherwise the
    survivors would wait in a collective forever. Checkpoints are committed atomically, so
    relaunching every process resumes from the last one.
    """
    if jax.process_count() == 1:
        return None
    from jax._src import distributed

    client = distributed.global_state.client
    me, n = jax.process_index(), jax.process_count()
    thread = threading.Thread(
        target=_watch, args=(client, me, n, timeout_s, period_s), name="pqm-watchdog", daemon=True
    )
    thread.start()
    return thread


_done = threading.Event()


def mark_done() -> None:
    """Tells the other processes' watchdogs (and its own) that this process has finished its
    work: what follows is the normal shutdown, not a failure."""
    _done.set()
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    try:
        distributed.global_state.client.key_value_set(
            f"{_PREFIX}/done/{jax.process_index()}", "1", allow_overwrite=True
        )
    except Exception:  # the coordinator may already be gone at exit
        pass


def _watch(client, me: int, n: int, timeout_s: float, period_s: float) -> None:
    seen = {p: (None, time.monotonic()) for p in range(n) if p != me}
    beat = 0
    while not _done.is_set():
        beat += 1
        try:
            client.key_value_set(f"{_PREFIX}/{me}", str(beat), allow_overwrite=True)
            for p, (last, since) in seen.items():
                if _try_get(client, f"{_PREFIX}/done/{p}") is not None:
                    continue
                value = _try_get(client, f"{_PREFIX}/{p}")
                now = time.monotonic()
                if value != last:
                    seen[p] = (value, now)
                elif now - since > timeout_s:
                    stop(
                        f"process {p} of {n} has not answered for {timeout_s:.0f} s "
                        "(killed, crashed or hung)"
                    )
        except Exception as e:  # the coordinator (process 0) is gone
            if _done.is_set():
                return
            if me != 0:
                stop(f"lost the coordinator, process 0 of {n} ({type(e).__name__})")
            raise
        time.sleep(period_s)


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as e:
        if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
            return None
        raise


def lost_peer(error: BaseException) -> str | None:
    """What `error` says when it is a collective that failed because another process of the
    run went away (None for any other error, and on one process)."""
    if jax.process_count() == 1:
        return None
    text = str(error)
    signs = ("Gloo", "Connection reset by peer", "heartbeat timeout", "Barrier failed")
    if not any(s in text for s in signs):
        return None
    first = text.splitlines()[0] if text else type(error).__name__
    return f"another process of the run is gone ({first[:160]})"


def stop(reason: str) -> None:
    """Ends this process now with `reason` and how to resume (exit code 75); skips JAX's
    shutdown barrier, which a lost process would fail."""
    import os
    import sys

    sys.stderr.write(
        f"\npqm: {reason}; process {jax.process_index()} stops too. Relaunch all "
        f"{jax.process_count()} processes with the same command to resume from the last "
        "checkpoint.\n"
    )
    sys.stderr.flush()
    os._exit(75)
