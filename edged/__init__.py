"""edged: live speaker diarization on the edge (who speaks when), published over MQTT.

The edge runtime imports no torch: numpy, scipy, onnxruntime, paho-mqtt, pyyaml (+ pyaudio).
"""

__version__ = "0.1.0"
