"""AlsaCapture through the real path pyaudio -> PortAudio -> libasound.

The "microphone" is an ALSA ``type file`` PCM defined in a private config (``ALSA_CONFIG_PATH``):
its ``infile`` is a FIFO that a thread fills at real-time pace (the ``null`` slave does not pace),
one capture block per write, so PortAudio's reads are whole blocks and the samples arrive
unchanged. Its output ``file`` is a pipe to a ``cat`` process: killing that ``cat`` makes the
plugin's next write fail, which ends PortAudio's stream thread with a host error, as pulling a
USB microphone does; removing the FIFO makes the device disappear from PortAudio's device list.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from scipy.signal import resample_poly

import edged.sources.alsa as capture
from edged.sources.alsa import (AlsaCapture, AudioConfig, CaptureStats, InputDevice, check_device, list_devices,
                           resolve_device)
from edged.errors import AudioError

DEVICE = "edgedtest"


def require_pyaudio() -> None:
    try:
        import pyaudio  # noqa: F401
    except ImportError:
        pytest.fail("pyaudio is missing: pip install -e '.[alsa]' (apt: portaudio19-dev, libasound2)")


def wait_for(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class FifoMic:
    """A fake capture device: ALSA ``type file`` PCM whose input is a FIFO filled in real time."""

    def __init__(self, root: Path):
        self.root = root
        self.fifo = root / "mic.fifo"
        self.pidfile = root / "sink.pid"
        self.conf = root / "asound.conf"
        # pcm.default keeps PortAudio 19.6's device-list assertion happy (it expects at least one
        # entry named default or dmix) and is never opened by these tests.
        self.conf.write_text(f"""
pcm.{DEVICE} {{
    type file
    slave.pcm {{ type null }}
    file "|echo $$ > {self.pidfile}; exec cat > /dev/null"
    infile "{self.fifo}"
    format "raw"
}}
pcm.default {{
    type null
}}
""")
        self.fd: int | None = None
        self.thread: threading.Thread | None = None
        self.stop_evt = threading.Event()
        self.pause_evt = threading.Event()
        self.writes: list[tuple[int, float]] = []  # (block index, time.time() of the write)

    def plug(self) -> None:
        """Create the FIFO and hold it open (opening it for reading would block otherwise)."""
        if not self.fifo.exists():
            os.mkfifo(self.fifo)
        self.fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        try:  # room for seconds of audio: a full pipe would split a block and misalign the reads
            fcntl.fcntl(self.fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass

    def play(self, block: Callable[[int], np.ndarray], rate: int, frames: int) -> None:
        """Write ``block(i)`` (int16, frames x channels) when its last sample is due, i = 0, 1, ..."""
        self.stop_evt.clear()
        self.writes = []
        self.thread = threading.Thread(target=self._run, args=(block, rate, frames), daemon=True)
        self.thread.start()

    def _run(self, block, rate, frames) -> None:
        t0, i = time.monotonic(), 0
        while not self.stop_evt.is_set():
            if self.pause_evt.is_set():
                self.stop_evt.wait(0.02)
                t0 = time.monotonic() - i * frames / rate
                continue
            if self.stop_evt.wait(max(0.0, t0 + (i + 1) * frames / rate - time.monotonic())):
                break
            data = np.ascontiguousarray(block(i), dtype=np.int16).tobytes()
            while data and not self.stop_evt.is_set():  # whole blocks only: PortAudio reads whole blocks
                try:
                    data = data[os.write(self.fd, data):]
                except BlockingIOError:
                    time.sleep(0.01)
            self.writes.append((i, time.time()))
            i += 1

    def stop_playing(self) -> None:
        self.stop_evt.set()
        if self.thread is not None:
            self.thread.join(5)
            self.thread = None

    def unplug(self) -> None:
        """Remove the FIFO (the PCM can no longer be opened for capture), stop writing, close it.
        An open stream keeps reading the nameless FIFO until the writer stops."""
        self.fifo.unlink(missing_ok=True)
        self.stop_playing()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def kill_sink(self) -> None:
        """Kill the plugin's output process: the next write fails and the stream dies."""
        wait_for(lambda: self.pidfile.exists() and self.pidfile.read_text().strip(), 10, "the sink pid")
        os.kill(int(self.pidfile.read_text()), signal.SIGKILL)


@pytest.fixture
def mic(tmp_path, monkeypatch):
    require_pyaudio()
    m = FifoMic(tmp_path)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(m.conf))
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    m.plug()
    yield m
    m.unplug()


@pytest.fixture
def open_capture(mic):
    """Start AlsaCapture objects; stopped before the microphone goes away."""
    started: list[AlsaCapture] = []

    def start(config: AudioConfig) -> AlsaCapture:
        cap = AlsaCapture(config)
        cap.start()
        started.append(cap)
        return cap

    yield start
    for cap in started:
        cap.stop()


def read_samples(cap: AlsaCapture, n: int, timeout: float = 20.0, times: list | None = None) -> np.ndarray:
    """Read until ``n`` samples arrived; ``times`` gets (samples so far, time.time()) per block."""
    out, total = [], 0
    deadline = time.monotonic() + timeout
    while total < n:
        assert time.monotonic() < deadline, f"only {total} of {n} samples in {timeout:g} s; {cap.stats}"
        block = cap.read(0.5)
        if block is not None:
            assert block.dtype == np.float32 and block.ndim == 1
            out.append(block)
            total += len(block)
            if times is not None:
                times.append((total, time.time()))
    return np.concatenate(out)


def blocks_of(data: np.ndarray, frames: int) -> Callable[[int], np.ndarray]:
    """``data`` (frames x channels) cut in blocks, then silence."""
    def block(i: int) -> np.ndarray:
        part = data[i * frames:(i + 1) * frames]
        if len(part) < frames:
            part = np.concatenate([part, np.zeros((frames - len(part), data.shape[1]), np.int16)])
        return part
    return block


def constant_blocks(first: int, frames: int) -> Callable[[int], np.ndarray]:
    """Block i holds the value first + i in every sample: read blocks tell which blocks they are."""
    return lambda i: np.full((frames, 1), first + i, np.int16)


def block_values(audio: np.ndarray, frames: int) -> list[int]:
    ints = np.round(audio * 32768).astype(np.int64)
    assert len(ints) % frames == 0
    values = []
    for b in ints.reshape(-1, frames):
        assert (b == b[0]).all(), "a block mixes two written blocks"
        values.append(int(b[0]))
    return values


# --- device selection (no PortAudio) ------------------------------------------------------------
DEVICES = [InputDevice(0, "USB PnP Sound Device: Audio (hw:1,0)", 1, 48000.0),
           InputDevice(2, "sysdefault", 128, 48000.0),
           InputDevice(3, "default", 128, 44100.0),
           InputDevice(4, "dsnoop", 128, 48000.0)]


def test_resolve_device_by_index_name_card_and_substring(tmp_path):
    proc = tmp_path / "asound"
    proc.mkdir()
    (proc / "card1").mkdir()
    os.symlink("card1", proc / "Device")
    assert resolve_device("3", DEVICES).name == "default"
    assert resolve_device("default", DEVICES).index == 3  # exact wins over the substring "sysdefault"
    assert resolve_device("plughw:CARD=Device,DEV=0", DEVICES, proc).index == 0
    assert resolve_device("hw:Device", DEVICES, proc).index == 0
    assert resolve_device("hw:1,0", DEVICES, proc).index == 0
    assert resolve_device("usb pnp", DEVICES).index == 0


@pytest.mark.parametrize("spec,words", [
    ("7", ["index 7", "0 'USB PnP", "3 'default'"]),
    ("nope", ["'nope' not found", "4 'dsnoop'", "edged check", "arecord -L"]),
    ("s", ["ambiguous", "sysdefault", "dsnoop"]),
    ("hw:CARD=Other,DEV=0", ["not found"]),
])
def test_resolve_device_errors_are_one_line(spec, words, tmp_path):
    with pytest.raises(AudioError) as err:
        resolve_device(spec, DEVICES, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_config_validation():
    with pytest.raises(ValueError, match="retry_max_s"):
        AudioConfig(retry_min_s=5, retry_max_s=1).validate()
    with pytest.raises(ValueError, match="file is not set"):
        AudioConfig(source="file").validate()
    AudioConfig().validate()


def test_overrun_flag_is_counted():
    """PortAudio's paInputOverflow status flag on a callback counts one overrun; the block is kept."""
    cap = AlsaCapture(AudioConfig(device=DEVICE, rate=16000, channels=1))
    cap._on_audio(cap._gen, bytes(3200), 1600, 16000, 1, 2)
    cap._on_audio(cap._gen, bytes(3200), 1600, 16000, 1, 0)
    assert cap.stats.overruns == 1 and cap.stats.queue_depth == 2
    assert len(cap.read(0.1)) == 1600


# --- the real ALSA path -------------------------------------------------------------------------
def test_16k_mono_samples_arrive_unchanged(mic, open_capture):
    """Device at 16 kHz mono int16: what read() returns is exactly file sample / 32768, in order,
    from the first sample; origin is the wall clock of the first sample."""
    rng = np.random.default_rng(0)
    data = rng.integers(-32768, 32768, size=(16000 * 2, 1)).astype(np.int16)  # full range, 2 s
    data[:3, 0] = [-32768, 32767, 0]
    cap = open_capture(AudioConfig(device=DEVICE, rate=16000, channels=1))
    assert (cap.device_name, cap.rate, cap.channels) == (DEVICE, 16000, 1)
    mic.play(blocks_of(data, 1600), 16000, 1600)
    times: list = []
    got = read_samples(cap, len(data), times=times)
    assert np.array_equal(got[:len(data)], data[:, 0].astype(np.float32) / 32768)
    assert got[0] == -1.0 and got[1] == np.float32(32767 / 32768)
    # capture-to-read latency: from writing a block into the "device" to read() returning it
    written = dict(mic.writes)
    lat = [t - written[n // 1600 - 1] for n, t in times if n // 1600 - 1 in written]
    assert np.median(lat) < 0.5, lat
    first_write = written[0] - 0.1  # block 0 covers the 100 ms before its write
    assert abs(cap.origin - first_write) < 0.5
    s = cap.stats
    assert (s.overruns, s.dropped_blocks, s.reconnects, s.device_ok) == (0, 0, 0, True)
    print(f"\ncapture->read latency median {1e3 * np.median(lat):.1f} ms, max {1e3 * max(lat):.1f} ms")


def test_48k_stereo_becomes_16k_mono(mic, open_capture):
    """48 kHz stereo: channels averaged, resampled like resample_poly (no block edges), the 12 kHz
    component above the new Nyquist frequency filtered out, levels kept."""
    t = np.arange(48000 * 2) / 48000
    left = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 12000 * t)
    right = 0.3 * np.sin(2 * np.pi * 1000 * t)
    data = np.round(np.stack([left, right], 1) * 32767).astype(np.int16)
    cap = open_capture(AudioConfig(device=DEVICE, rate=48000, channels=2))
    mic.play(blocks_of(data, 4800), 48000, 4800)
    got = read_samples(cap, 32000)[:32000]
    mono = data.astype(np.float64).mean(axis=1) / 32768
    expected = resample_poly(mono, 1, 3)[:32000]
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    core = got[1600:-1600]
    spectrum = np.abs(np.fft.rfft(core * np.hanning(len(core))))
    freqs = np.fft.rfftfreq(len(core), 1 / 16000)
    peak = spectrum.max()
    assert abs(freqs[np.argmax(spectrum)] - 440) < 2
    assert spectrum[np.argmin(abs(freqs - 1000))] > 0.5 * peak
    assert spectrum[np.argmin(abs(freqs - 4000))] < 1e-3 * peak  # where 12 kHz would alias
    rms = np.sqrt(np.mean(core.astype(np.float64) ** 2))
    assert abs(rms - np.sqrt(0.2 ** 2 / 2 + 0.15 ** 2 / 2)) < 0.005


def test_device_defaults_44k1_stereo(mic, open_capture):
    """rate/channels null: the device's default rate (44100 for this PCM) and 2 channels."""
    t = np.arange(44100) / 44100
    tone = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    data = np.stack([tone, tone], 1)
    cap = open_capture(AudioConfig(device=DEVICE))
    assert (cap.rate, cap.channels) == (44100, 2)
    mic.play(blocks_of(data, 4410), 44100, 4410)
    got = read_samples(cap, 16000)[:16000]
    np.testing.assert_allclose(got, resample_poly(tone / 32768, 160, 441)[:16000], rtol=0, atol=2e-6)


def test_unknown_device_names_it_and_lists_the_available_ones(mic):
    with pytest.raises(AudioError) as err:
        AlsaCapture(AudioConfig(device="no-such-mic")).start()
    message = str(err.value)
    assert "\n" not in message and "'no-such-mic' not found" in message and f"'{DEVICE}'" in message
    with pytest.raises(AudioError, match="no-such-mic"):
        check_device(AudioConfig(device="no-such-mic"))


def test_list_devices_and_check_device(mic):
    assert any(line.endswith(f": {DEVICE} (128 ch in, 44100 Hz)") for line in list_devices())
    tone = np.round(0.25 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 32767).astype(np.int16)
    mic.play(blocks_of(tone[:, None], 1600), 16000, 1600)
    line = check_device(AudioConfig(device=DEVICE, rate=16000, channels=1))
    assert line.startswith(f"ok audio device '{DEVICE}'") and "16000 Hz, 1 ch" in line
    level = float(line.split("level ")[1].split(" dBFS")[0])
    assert abs(level - 20 * np.log10(0.25 / np.sqrt(2))) < 1.0  # -15 dBFS sine


def test_slow_consumer_drops_oldest_and_counts(mic, open_capture):
    """Queue of 0.5 s (5 blocks) and a consumer that reads nothing for a while: the oldest blocks
    are dropped and counted, the newest are kept, and after that no block is lost or reordered."""
    cap = open_capture(AudioConfig(device=DEVICE, rate=16000, channels=1, queue_seconds=0.5))
    mic.play(constant_blocks(100, 1600), 16000, 1600)
    wait_for(lambda: cap.stats.dropped_blocks >= 8, 20, "8 dropped blocks")
    got = read_samples(cap, 1600 * 15)
    values = block_values(got[:1600 * 15], 1600)
    stats = cap.stats
    first = values[0] - 100  # index of the first block delivered: the blocks before it were dropped
    assert first >= 8 and values == sorted(set(values)), values
    missing = values[-1] - values[0] + 1 - len(values)  # 0 unless a loaded machine stalled the reader
    assert stats.dropped_blocks == first + missing  # each block lost is a counted drop
    assert stats.dropped_seconds == pytest.approx(0.1 * stats.dropped_blocks)
    assert stats.behind >= 1 and stats.queue_depth <= 5 and stats.device_ok
    # origin is the wall clock of the first delivered sample: that of block `first`
    written = dict(mic.writes)
    assert abs(cap.origin - (written[first] - 0.1)) < 0.5


def test_unplugged_device_is_reopened_when_it_returns(mic, open_capture):
    """The stream dies (write error, as on USB unplug) and the PCM disappears: device_ok goes false,
    reopening fails with backoff while it is gone, then succeeds when it is back; reconnects is
    counted and the new audio arrives unchanged."""
    cap = open_capture(AudioConfig(device=DEVICE, rate=16000, channels=1, retry_min_s=0.2, retry_max_s=0.8))
    mic.play(constant_blocks(1, 1600), 16000, 1600)
    first = read_samples(cap, 1600 * 3)
    assert block_values(first[:1600 * 3], 1600) == [1, 2, 3]
    origin_before, delivered = cap.origin, len(first)
    mic.fifo.unlink()  # gone for any reopen; the open stream still reads the nameless FIFO
    mic.kill_sink()  # ... until its write fails: the stream dies
    wait_for(lambda: not cap.stats.device_ok, 10, "device_ok to turn false")
    mic.unplug()
    wait_for(lambda: cap.stats.open_failures >= 2, 15, "failed reopen attempts")
    assert DEVICE not in " ".join(list_devices())  # PortAudio re-read its device list
    assert cap.stats.reconnects == 0 and not cap.stats.device_ok
    while (block := cap.read(0.05)) is not None:  # what the dying stream had queued
        delivered += len(block)
    mic.plug()
    wait_for(lambda: cap.stats.device_ok, 15, "the device to be reopened")
    mic.play(constant_blocks(1000, 1600), 16000, 1600)  # a FIFO would keep older audio: start now
    values = block_values(read_samples(cap, 1600 * 5)[:1600 * 5], 1600)
    assert values == list(range(1000, 1005)), values
    stats = cap.stats
    assert stats.reconnects == 1 and stats.open_failures >= 2
    # origin moved forward by the outage: origin + stream time of the first new sample is the
    # wall clock of that sample (its block was written 100 ms after it "began")
    assert cap.origin > origin_before + 0.5
    assert abs(cap.origin + delivered / 16000 - (dict(mic.writes)[0] - 0.1)) < 0.5


def test_stalled_device_is_reopened(mic, open_capture):
    """A device that stops delivering (no error) for stall_s is closed and reopened."""
    cap = open_capture(AudioConfig(device=DEVICE, rate=16000, channels=1, stall_s=0.6, retry_min_s=0.2))
    mic.play(constant_blocks(1, 1600), 16000, 1600)
    read_samples(cap, 1600 * 2)
    mic.pause_evt.set()
    wait_for(lambda: not cap.stats.device_ok, 10, "the stall to be noticed")
    mic.pause_evt.clear()  # PortAudio's thread is blocked reading; new data lets the close finish
    wait_for(lambda: cap.stats.device_ok and cap.stats.reconnects == 1, 15, "the reopen")
    while cap.read(0.05) is not None:
        pass
    values = block_values(read_samples(cap, 1600 * 3)[:1600 * 3], 1600)
    assert values == list(range(values[0], values[0] + 3))


def test_stream_that_cannot_be_closed_is_fatal(mic, open_capture, monkeypatch):
    """If PortAudio cannot close a stalled stream, read() raises AudioError (restart the service)
    instead of going silent forever."""
    monkeypatch.setattr(capture, "CLOSE_TIMEOUT_S", 0.5)
    cap = open_capture(AudioConfig(device=DEVICE, rate=16000, channels=1, stall_s=0.6))
    mic.play(constant_blocks(1, 1600), 16000, 1600)
    read_samples(cap, 1600 * 2)
    mic.pause_evt.set()  # PortAudio's thread now blocks in read() and cannot be cancelled
    deadline = time.monotonic() + 15
    with pytest.raises(AudioError, match="restart edged") as err:
        while time.monotonic() < deadline:
            cap.read(0.1)
    assert "\n" not in str(err.value) and not cap.stats.device_ok
    mic.pause_evt.clear()  # let the stuck close finish before the next test uses PortAudio

    def closed() -> bool:
        if capture._PA_LOCK.acquire(timeout=0.01):
            capture._PA_LOCK.release()
            return True
        return False
    wait_for(closed, 10, "the stuck close to finish")


def test_stats_dict_shape():
    cap = AlsaCapture(AudioConfig(device=DEVICE))
    d = cap.stats_dict()
    assert d["source"] == "alsa" and set(CaptureStats.__dataclass_fields__) <= set(d)
    assert cap.read(0.01) is None and cap.origin is None
