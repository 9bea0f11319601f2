"""UIS-RNN clustering figures of a bundle made by ``edged-export uisrnn``.

    .venv/bin/python benchmarks/uisrnn_clustering.py --models models/v2-uisrnn --output bench-out/uisrnn \
        [--data ../shared/data] [--lags 0,1,2,4,8,16] [--der-lags 0,4] [--beam 10] \
        [--speed-minutes 60] [--cache-dir DIR] [--parts parity,agreement,der,speed]

Prints, and writes to ``OUTPUT/uisrnn_eval.json``:
- parity: the edge decoder offline (infinite lag) vs ``uisrnn.UISRNN.predict`` (test_iteration 1,
  look_ahead 1, same beam) on every evaluation and training sequence, N identical up to renaming / N;
- agreement of the fixed-lag decoder with the offline one vs the lag L (steps);
- DER on AMI dev00/dev01 (inside the UEM), sample and falcon: incremental clustering next to
  uisrnn (same bundle, int8, 5 s latency) -- the bundle's ``training`` entry says what it was
  trained on, which must not include these recordings;
- decoder time per pipeline step (beam 10, median and p95) over a long stream, 1 thread.

A thin wrapper over ``python -m edged_host.uisrnn_eval`` (same arguments). Not named
``uisrnn.py``: the script's folder comes first on sys.path and would hide the ``uisrnn`` package.
"""

from __future__ import annotations

import sys

import edged  # noqa: F401  (first: pins the BLAS pools to one thread before numpy loads)
from edged_host.uisrnn_eval import main

if __name__ == "__main__":
    sys.exit(main())
