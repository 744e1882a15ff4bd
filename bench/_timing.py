"""Shared timing helpers of the bench/ scripts (2 intra-op threads, median of repeats)."""

from __future__ import annotations

import os
import resource
import statistics
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
tf.config.threading.set_intra_op_parallelism_threads(THREADS)
tf.config.threading.set_inter_op_parallelism_threads(1)


def median_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds; fn's result is fetched to the host."""
    for _ in range(warmup):
        _fetch(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _fetch(fn())
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _fetch(result) -> None:
    for t in tf.nest.flatten(result):
        t.numpy()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
