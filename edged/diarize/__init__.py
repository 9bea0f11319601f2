"""Streaming diarization: hyper-parameters, clustering, aggregation, binarization. Pure, no I/O."""
