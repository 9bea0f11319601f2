"""edged host tools (laptop or server, never the edge): ``edged-bench``, ``edged-tune`` and
``edged-conversations``.

May import pyannote.metrics, optuna, matplotlib and ``edged``; ``edged`` never imports this.
The benchmark workers (``edged_host.worker``) import only the edge runtime, so the step times and
peak memory they measure are the daemon's own.
"""

import edged  # noqa: F401  (first: pins numpy's BLAS pool to one thread before numpy loads)
