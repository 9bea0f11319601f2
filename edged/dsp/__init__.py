"""Signal processing: fbank features, the streaming resampler, the rolling buffer, frame grids."""
