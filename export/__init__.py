"""edged_export: the host export stage (PyTorch -> ONNX -> int8, with parity proof).

Host only: imports torch and pyannote.audio. It may import ``edged``; never the other way round.
"""
