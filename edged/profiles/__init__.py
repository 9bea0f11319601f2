"""Voice profiles and speaker state on disk (file I/O; the math is in ``edged.diarize.identify``)."""
