"""Live microphone capture: ALSA through PortAudio (pyaudio) -> 16 kHz mono float32 blocks.

Choosing the device (YAML ``audio.device``):

- ``edged check`` lists the input devices PortAudio sees (index, name, channels, default rate)
  and test-opens the configured one; ``arecord -L`` lists ALSA's names and ``arecord -l`` the
  cards. PortAudio lists the ALSA PCMs of the config (``default``, ``sysdefault``, ``dsnoop``,
  the ones in ``~/.asoundrc`` or ``/etc/asound.conf``...) under their own names and every card
  device as ``"<card>: <device> (hw:<card index>,<device>)"``.
- ``audio.device`` is matched in this order: an integer index; an exact name; an ALSA card name
  ``hw:CARD=Device,DEV=0`` / ``plughw:CARD=Device,DEV=0`` / ``hw:1,0`` (resolved through
  ``/proc/asound`` to PortAudio's ``(hw:1,0)`` device; a ``plughw`` name sets
  ``PA_ALSA_PLUGHW=1`` so that PortAudio opens the card through ALSA's plug layer); else a
  unique case-insensitive substring of a name (``"USB"``). Card numbers change when USB devices
  are plugged in another order: prefer ``CARD=<id>`` names or ``default``.
- ``default`` follows ALSA's default PCM; on a Raspberry Pi whose only microphone is a USB one,
  point it at the card in ``/etc/asound.conf`` or use ``plughw:CARD=Device,DEV=0`` directly.

The device is opened at ``audio.rate``/``audio.channels`` or its defaults (rate as PortAudio
reports it, at most 2 channels) as 16-bit PCM, mixed down to mono and resampled to 16 kHz with a
stateful polyphase filter (``edged.dsp.resample``, the ``resample_poly`` filter without block
edges). PortAudio calls back on its own thread once per ``block_ms``; the callback only
timestamps the block and appends it to a bounded queue (``queue_seconds``), so capture never
waits for inference. ``read()`` converts on the consumer's thread. When the consumer falls behind
(queue past half full) that is counted and logged; when the queue is full the OLDEST block is
dropped and counted. ALSA input overruns (``paInputOverflow``) are counted.

A supervisor thread watches the stream: when it stops (USB microphone unplugged: PortAudio's
thread ends on the ALSA error) or delivers nothing for ``stall_s``, the device is marked lost
(``device_ok`` false), closed, and reopened with exponential backoff from ``retry_min_s`` to
``retry_max_s``. Each reopen re-initializes PortAudio (terminate + new ``PyAudio``), because
PortAudio reads the device list only at initialization. ``origin`` is kept so that
``origin + stream time`` is the wall clock of a delivered sample also after drops and reconnects.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edged.config import AudioConfig
from edged.errors import AudioError
from edged.dsp.resample import StreamResampler

log = logging.getLogger("edged.sources.alsa")

CLOSE_TIMEOUT_S = 5.0  # a stream that PortAudio cannot close in this time is fatal (restart)
_PA_LOCK = threading.RLock()  # PortAudio initialization is process-global: one thread at a time
_NOISE = re.compile(
    r"^(ALSA lib |Cannot connect to server|jack server is not running|JackShmReadWritePtr|"
    r"Expression '.*' failed in '|Cannot lock down|\s*$)"
)
_HW_NAME = re.compile(r"^(?P<plug>plug)?hw:(?:CARD=)?(?P<card>[^,]+?)(?:,(?:DEV=)?(?P<dev>\d+))?$")


@dataclass
class CaptureStats:
    """Capture health figures (published in the daemon's stats)."""

    overruns: int = 0  # ALSA input overruns reported by PortAudio (audio lost before capture)
    dropped_blocks: int = 0  # blocks dropped because the queue was full (oldest first)
    dropped_seconds: float = 0.0  # audio those blocks held
    reconnects: int = 0  # successful reopens after the device was lost
    queue_depth: int = 0  # blocks waiting for the consumer now
    device_ok: bool = False  # the device is open and delivering audio
    behind: int = 0  # times the consumer fell behind (queue past half full)
    open_failures: int = 0  # failed reopen attempts


@dataclass(frozen=True)
class InputDevice:
    """A PortAudio input device."""

    index: int
    name: str
    channels: int  # maximum input channels
    default_rate: float

    def describe(self) -> str:
        return f"{self.index}: {self.name} ({self.channels} ch in, {self.default_rate:g} Hz)"


@dataclass
class _Block:
    data: bytes
    frames: int
    rate: int
    channels: int
    wall_end: float  # time.time() when the callback received the block
    new_segment: bool  # first block of a newly opened stream
    after_gap: bool = False  # audio before this block was dropped


class _RateLimit:
    """At most one log line per ``interval`` seconds; counts what it held back."""

    def __init__(self, interval: float):
        self.interval = interval
        self.next = 0.0
        self.held = 0

    def ready(self) -> int | None:
        """Lines held back since the last one, or None when this one must be held back too."""
        now = time.monotonic()
        if now < self.next:
            self.held += 1
            return None
        held, self.held, self.next = self.held, 0, now + self.interval
        return held


# --- PortAudio access -------------------------------------------------------------------------
def _pyaudio():
    try:
        import pyaudio
    except ImportError:
        raise AudioError("pyaudio is not installed; pip install 'edged[alsa]' (apt: portaudio19-dev), "
                         "or set audio.source: file") from None
    return pyaudio


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hold back what libasound/JACK print on fd 2 while PortAudio probes devices: known noise
    goes to the debug log, anything else (another thread's output) back to stderr."""
    try:
        sys.stderr.flush()
    except Exception:
        pass
    try:
        tmp = tempfile.TemporaryFile()
    except OSError:  # no writable temp folder: leave stderr alone
        yield
        return
    with tmp:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all
            yield
            return
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode("utf-8", "replace").splitlines():
                if _NOISE.match(line):
                    log.debug("portaudio: %s", line)
                else:
                    try:
                        os.write(2, (line + "\n").encode())
                    except OSError:
                        pass


def _new_pyaudio():
    """A fresh PortAudio instance (its device list is read now); caller holds _PA_LOCK."""
    pyaudio = _pyaudio()
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never spawn jackd while probing
    return pyaudio.PyAudio()


def _input_devices(pa) -> list[InputDevice]:
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append(InputDevice(i, str(info["name"]), int(info["maxInputChannels"]),
                                   float(info.get("defaultSampleRate") or 0.0)))
    return out


def _card_index(card: str, proc_asound: Path) -> int | None:
    """ALSA card id (``Device``) or number -> card number, through /proc/asound/<id> -> cardN."""
    if card.isdigit():
        return int(card)
    try:
        target = os.readlink(proc_asound / card)
    except OSError:
        return None
    m = re.fullmatch(r"card(\d+)", Path(target).name)
    return int(m.group(1)) if m else None


def _listing(devices: list[InputDevice]) -> str:
    return "; ".join(f"{d.index} {d.name!r}" for d in devices)


def resolve_device(spec: str, devices: list[InputDevice], proc_asound: Path = Path("/proc/asound")) -> InputDevice:
    """``audio.device`` -> an input device: index, exact name, hw:/plughw: card name, unique substring."""
    spec = str(spec).strip()
    hint = "set audio.device to one of them (`edged check` lists them, `arecord -L` shows ALSA's names)"
    if not devices:
        raise AudioError(f"audio device {spec!r} not found: PortAudio sees no input devices; "
                         "check that the microphone is plugged in (`arecord -l` lists the cards)")
    if re.fullmatch(r"\d+", spec):
        for d in devices:
            if d.index == int(spec):
                return d
        raise AudioError(f"audio device index {spec} is not an input device; available: {_listing(devices)}; {hint}")
    for d in devices:
        if d.name == spec:
            return d
    m = _HW_NAME.match(spec)
    if m:
        card = _card_index(m.group("card"), proc_asound)
        dev = int(m.group("dev") or 0)
        if card is not None:
            for d in devices:
                if d.name.endswith((f"(hw:{card},{dev})", f"(plughw:{card},{dev})")):
                    return d
    matches = [d for d in devices if spec.lower() in d.name.lower()] if spec else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AudioError(f"audio device {spec!r} is ambiguous, it matches {_listing(matches)}; "
                         "set audio.device to the exact name or the index")
    raise AudioError(f"audio device {spec!r} not found; available input devices: {_listing(devices)}; {hint}")


def list_devices() -> list[str]:
    """Input devices as ``"index: name (N ch in, R Hz)"`` (PortAudio's view, fresh)."""
    with _PA_LOCK, _quiet_stderr():
        pa = _new_pyaudio()
        try:
            return [d.describe() for d in _input_devices(pa)]
        finally:
            pa.terminate()


def check_device(config: AudioConfig, timeout: float = 3.0, sample_rate: int = 16000) -> str:
    """Open the configured source, read about half a second, close: one-line "ok ..." or AudioError."""
    if config.source == "file":
        if config.file is None:
            raise AudioError("audio.source is file but audio.file is not set; set audio.file")
        import soundfile as sf

        try:
            info = sf.info(str(config.file))
        except Exception as exc:
            raise AudioError(f"{config.file}: cannot read audio file ({exc}); use WAV, FLAC or OGG") from None
        return f"ok audio file {config.file}: {info.samplerate} Hz, {info.channels} ch, {info.duration:.1f} s"
    capture = AlsaCapture(config, sample_rate)
    capture.start()
    try:
        blocks: list[np.ndarray] = []
        deadline = time.monotonic() + timeout
        while sum(map(len, blocks)) < sample_rate // 2:
            left = deadline - time.monotonic()
            block = capture.read(max(left, 0.0)) if left > 0 else None
            if block is None:
                raise AudioError(f"audio device {capture.device_name!r} opened but delivered no audio in "
                                 f"{timeout:g} s; check that no other program holds it (`fuser -v /dev/snd/*`)")
            blocks.append(block)
        audio = np.concatenate(blocks)
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
        level = f"level {20 * math.log10(rms):.1f} dBFS" if rms > 0 else "all zero: check the capture level in alsamixer"
        return (f"ok audio device {capture.device_name!r} (index {capture.device_index}): {capture.rate} Hz, "
                f"{capture.channels} ch -> {sample_rate} Hz mono, {level}")
    finally:
        capture.stop()


# --- the capture --------------------------------------------------------------------------------
class AlsaCapture:
    """Live capture: ``start()``, ``read(timeout)`` -> 16 kHz mono float32 block or None, ``stop()``.

    ``stats`` (CaptureStats) and ``stats_dict()`` report health; ``origin`` is the Unix time of
    stream time 0 (the first delivered sample; moved forward by dropped or missed audio so that
    ``origin + stream time`` stays the wall clock). ``read`` raises AudioError only when the
    capture cannot recover in-process (PortAudio hung); the service manager should restart.
    """

    def __init__(self, config: AudioConfig, sample_rate: int = 16000):
        self.config = config
        self.sample_rate = int(sample_rate)
        self.origin: float | None = None
        self.device_name: str | None = None
        self.device_index: int | None = None
        self.rate: int | None = None
        self.channels: int | None = None
        self._stats = CaptureStats()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Block] = collections.deque()
        self._capacity = max(2, math.ceil(config.queue_seconds * 1000 / config.block_ms))
        self._gen = 0  # stream generation: callbacks of a closed stream are ignored
        self._new_segment = False
        self._gap = False
        self._behind_flag = False
        self._last_audio = 0.0
        self._pa = None
        self._stream = None
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._fatal: str | None = None
        self._lost_since: float | None = None
        # consumer-side state (read() thread only)
        self._resampler: StreamResampler | None = None
        self._delivered = 0  # 16 kHz samples returned by read()
        self._seg_out0 = 0.0  # stream time (s) where the current segment (stream) starts
        self._seg_in = 0  # device frames of the current segment fed to the resampler
        self._log_overrun = _RateLimit(30.0)
        self._log_drop = _RateLimit(10.0)
        self._log_behind = _RateLimit(30.0)
        self._log_retry = _RateLimit(60.0)

    # --- public -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """A microphone never finishes (a lost device is reopened)."""
        return False

    def start(self) -> None:
        """Open the device (AudioError naming it and the available ones) and start capturing."""
        if self._thread is not None:
            return
        self._stop_evt.clear()
        self._fatal = None
        self._open()
        self._thread = threading.Thread(target=self._supervise, name="edged-capture", daemon=True)
        self._thread.start()

    def read(self, timeout: float) -> np.ndarray | None:
        """The next 16 kHz mono float32 block (about ``block_ms`` long); None on timeout."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._cond:
                while not self._queue:
                    if self._fatal:
                        raise AudioError(self._fatal)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._cond.wait(left)
                block = self._queue.popleft()
                if self._behind_flag and len(self._queue) <= self._capacity // 4:
                    self._behind_flag = False
            out = self._convert(block)
            if len(out):
                return out

    def stop(self) -> None:
        """Stop capturing and close the device; queued audio is discarded."""
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT_S + 10)
            self._thread = None
        with self._cond:
            self._gen += 1
            self._queue.clear()
            self._stats.device_ok = False
        self._close_stream()

    @property
    def stats(self) -> CaptureStats:
        with self._cond:
            self._stats.queue_depth = len(self._queue)
            return CaptureStats(**asdict(self._stats))

    def stats_dict(self) -> dict[str, Any]:
        """``stats`` plus the device in use, for the daemon's stats payload."""
        d: dict[str, Any] = {"source": "alsa", "device": self.device_name, "rate": self.rate,
                             "channels": self.channels}
        s = asdict(self.stats)
        s["dropped_seconds"] = round(s["dropped_seconds"], 3)
        d.update(s)
        return d

    # --- PortAudio side -----------------------------------------------------------------------
    def _open(self) -> None:
        """(Re)initialize PortAudio, find the device, open and start the stream."""
        cfg = self.config
        if str(cfg.device).startswith("plughw:"):
            os.environ.setdefault("PA_ALSA_PLUGHW", "1")
        pyaudio = _pyaudio()
        with _PA_LOCK, _quiet_stderr():
            pa = _new_pyaudio()
            try:
                dev = resolve_device(cfg.device, _input_devices(pa))
                rate = int(cfg.rate or round(dev.default_rate) or 48000)
                channels = int(cfg.channels or min(dev.channels, 2))
                if channels > dev.channels:
                    raise AudioError(f"audio device {dev.name!r} has {dev.channels} input channels, "
                                     f"audio.channels={channels}; set audio.channels to 1..{dev.channels} or null")
                frames = max(1, round(rate * cfg.block_ms / 1000))
                with self._cond:
                    self._gen += 1
                    gen = self._gen
                    self._new_segment = True
                    self._last_audio = time.monotonic()
                callback = self._make_callback(gen, rate, channels, pyaudio.paContinue, pyaudio.paInputOverflow)
                try:
                    stream = pa.open(format=pyaudio.paInt16, channels=channels, rate=rate, input=True,
                                     input_device_index=dev.index, frames_per_buffer=frames,
                                     stream_callback=callback, start=True)
                except (OSError, ValueError) as exc:
                    detail = exc.args[1] if isinstance(exc, OSError) and len(exc.args) > 1 else exc
                    raise AudioError(f"cannot open audio device {dev.name!r} (index {dev.index}) at {rate} Hz, "
                                     f"{channels} ch: {detail}; set audio.rate/audio.channels to values it supports "
                                     f"(`arecord -D <device> --dump-hw-params`) or free it") from None
            except BaseException:
                pa.terminate()
                raise
        self._pa, self._stream = pa, stream
        self.device_name, self.device_index, self.rate, self.channels = dev.name, dev.index, rate, channels
        with self._cond:
            self._stats.device_ok = True
            self._last_audio = time.monotonic()
        log.info("audio: device %r (index %d) open at %d Hz, %d ch, %d ms blocks -> %d Hz mono",
                 dev.name, dev.index, rate, channels, cfg.block_ms, self.sample_rate)

    def _make_callback(self, gen: int, rate: int, channels: int, go_on: int, overflow_flag: int):
        def callback(in_data, frame_count, time_info, status):
            self._on_audio(gen, in_data, frame_count, rate, channels, status & overflow_flag)
            return (None, go_on)

        return callback

    def _on_audio(self, gen: int, data: bytes, frames: int, rate: int, channels: int, overflow: int) -> None:
        """PortAudio's thread: timestamp and queue the block; never waits for the consumer."""
        now = time.time()
        note = []
        with self._cond:
            if gen != self._gen or data is None:
                return
            self._last_audio = time.monotonic()
            if overflow:
                self._stats.overruns += 1
                held = self._log_overrun.ready()
                if held is not None:
                    note.append((logging.WARNING, "audio input overrun: ALSA dropped samples before capture "
                                 "(total %d%s)", self._stats.overruns, held))
            block = _Block(bytes(data), int(frames), rate, channels, now, self._new_segment)
            self._new_segment = False
            if len(self._queue) >= self._capacity:
                old = self._queue.popleft()
                self._stats.dropped_blocks += 1
                self._stats.dropped_seconds += old.frames / old.rate
                (self._queue[0] if self._queue else block).after_gap = True
                if old.new_segment:  # keep the segment start marker on the new head
                    (self._queue[0] if self._queue else block).new_segment = True
                held = self._log_drop.ready()
                if held is not None:
                    note.append((logging.WARNING, "audio queue full (%g s): dropped the oldest block "
                                 "(total %d blocks, %.1f s%s)", self.config.queue_seconds,
                                 self._stats.dropped_blocks, self._stats.dropped_seconds, held))
            self._queue.append(block)
            if not self._behind_flag and len(self._queue) > self._capacity // 2:
                self._behind_flag = True
                self._stats.behind += 1
                held = self._log_behind.ready()
                if held is not None:
                    note.append((logging.WARNING, "audio processing is behind real time: %.1f s queued "
                                 "(limit %g s; total %d times%s)", len(self._queue) * self.config.block_ms / 1000,
                                 self.config.queue_seconds, self._stats.behind, held))
            self._cond.notify()
        for level, msg, *args in note:
            held = args.pop()
            log.log(level, msg, *args, f", {held} similar not logged" if held else "")

    def _close_stream(self) -> None:
        """Close the stream and terminate PortAudio on a helper thread, waiting CLOSE_TIMEOUT_S."""
        stream, pa = self._stream, self._pa
        self._stream = self._pa = None
        if stream is None and pa is None:
            return

        def work() -> None:
            with _PA_LOCK:
                for fn in ((stream.close if stream is not None else None), (pa.terminate if pa is not None else None)):
                    if fn is not None:
                        try:
                            fn()
                        except Exception as exc:  # the device may already be gone
                            log.debug("audio close: %s", exc)

        closer = threading.Thread(target=work, name="edged-capture-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            self._fatal = (f"audio device {self.device_name!r}: PortAudio did not close the stalled stream in "
                           f"{CLOSE_TIMEOUT_S:g} s; restart edged (systemd restarts it)")
            log.error(self._fatal)
            with self._cond:
                self._cond.notify_all()

    def _health(self) -> str | None:
        """Why the open stream counts as lost, or None."""
        try:
            active = self._stream.is_active()
        except Exception as exc:
            return f"stream error ({exc})"
        if not active:
            return "the stream stopped (device error or unplugged)"
        with self._cond:
            silent = time.monotonic() - self._last_audio
        if silent > self.config.stall_s:
            return f"no audio for {silent:.1f} s"
        return None

    def _supervise(self) -> None:
        """Watch the stream; on loss close it and reopen with exponential backoff."""
        cfg = self.config
        poll = min(0.1, cfg.stall_s / 4)
        delay = cfg.retry_min_s
        next_try = 0.0
        while not self._stop_evt.is_set():
            if self._stream is not None:
                if self._stop_evt.wait(poll):
                    break
                reason = self._health()
                if reason is None:
                    continue
                with self._cond:
                    self._gen += 1  # ignore whatever the dying stream still delivers
                    self._stats.device_ok = False
                self._lost_since = time.monotonic()
                log.warning("audio device %r lost: %s; reopening (backoff %g..%g s)",
                            self.device_name, reason, cfg.retry_min_s, cfg.retry_max_s)
                self._close_stream()
                if self._fatal:
                    return
                delay = cfg.retry_min_s
                next_try = time.monotonic() + delay
                continue
            if self._stop_evt.wait(max(0.0, next_try - time.monotonic())):
                break
            try:
                self._open()
            except AudioError as exc:
                with self._cond:
                    self._stats.open_failures += 1
                    failures = self._stats.open_failures
                delay = min(delay * 2, cfg.retry_max_s)
                next_try = time.monotonic() + delay
                if self._log_retry.ready() is not None:
                    down = time.monotonic() - (self._lost_since or time.monotonic())
                    log.warning("audio device still unavailable after %.0f s (%d failed attempts, next in %g s): %s",
                                down, failures, delay, exc)
                continue
            with self._cond:
                self._stats.reconnects += 1
            down = time.monotonic() - (self._lost_since or time.monotonic())
            log.warning("audio device %r is back after %.1f s (reconnect %d)", self.device_name, down,
                        self._stats.reconnects)
            self._log_retry = _RateLimit(60.0)

    # --- consumer side ------------------------------------------------------------------------
    def _convert(self, block: _Block) -> np.ndarray:
        """int16 interleaved -> mono float32 (x / 32768) -> 16 kHz; keeps ``origin`` right."""
        tail = np.zeros(0, np.float32)
        if block.new_segment or self._resampler is None or self._resampler.rate_in != block.rate:
            if self._resampler is not None:
                tail = self._resampler.flush()  # end the previous stream's filter cleanly
            self._resampler = StreamResampler(block.rate, self.sample_rate)
            self._seg_out0 = (self._delivered + len(tail)) / self.sample_rate
            self._seg_in = 0
            reanchor = True
        else:
            reanchor = block.after_gap
        if reanchor:  # stream time of this block's first sample <-> its wall clock
            stream_t = self._seg_out0 + self._seg_in / block.rate
            self.origin = block.wall_end - block.frames / block.rate - stream_t
        pcm = np.frombuffer(block.data, dtype=np.int16)
        if block.channels > 1:
            mono = pcm.reshape(-1, block.channels).astype(np.float32).mean(axis=1)
        else:
            mono = pcm.astype(np.float32)
        mono *= np.float32(1.0 / 32768.0)
        self._seg_in += block.frames
        out = self._resampler.process(mono)
        if len(tail):
            out = np.concatenate([tail, out])
        self._delivered += len(out)
        return out
