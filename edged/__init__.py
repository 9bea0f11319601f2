"""edged: live speaker diarization on the edge (who speaks when), published over MQTT.

The edge runtime imports no torch: numpy, soundfile, onnxruntime, paho-mqtt, pyyaml (+ pyaudio).
"""

import os as _os

__version__ = "0.1.0"

# One compute thread is the design (onnxruntime gets its count explicitly). numpy's OpenBLAS
# otherwise starts a worker per core whose spin-waiting after each small matmul took a whole
# core and slowed the model thread ~1.5x on a 2-core machine. Set before numpy is imported;
# an explicit environment value wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
