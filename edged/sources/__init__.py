"""Audio sources: files, raw PCM, replay at wall-clock speed, ALSA capture."""
