"""The daemon: audio source -> streaming pipeline -> spool + MQTT, under systemd.

Main thread: read a block (bounded wait), push it through the pipeline, hand turns to the
publisher (spooled and fsync'd before they are sent), feed the watchdog, publish stats. Capture
runs on its own thread behind a bounded queue; paho runs its network loop on another.

Signals: SIGTERM/SIGINT stop (flush the open turns, publish them, ``offline``), SIGHUP reloads
the config (speaker state is kept when the stream geometry is unchanged; new speakers settings,
or a new state directory, give a new ``SpeakerService`` that takes the running speakers). A reload whose config
fails validation, or needs what cannot be built (models, a spool folder without room), is logged
on one line and refused as a whole: the running config, spool and publisher stay. A new
``spool.path`` takes the unacknowledged turns over (``Spool.take_over``), with their seqs.

A turn the spool cannot write (disk full) is counted as dropped and the daemon keeps running;
shutdown closes the publisher (``offline``) and the spool whatever failed before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edged.config import DaemonConfig
from edged.delivery.spool import Spool, SpoolWriteError
from edged.diarize.events import Event, TurnEvent
from edged.diarize.stream import Stream
from edged.errors import AudioError, ConfigError, EdgedError
from edged.messages import ActivityMessage, TurnMessage, stats_payload
from edged.models.blocks import Models, load_models
from edged.service.notify import Notifier
from edged.service.speakers import SpeakerService, settings as speaker_settings
from edged.settings import load_config
from edged.sources.base import AudioSource

if TYPE_CHECKING:
    from edged.delivery.mqtt import MqttPublisher

log = logging.getLogger("edged.service.daemon")
READ_TIMEOUT_S = 0.2
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def open_source(config: DaemonConfig, sample_rate: int, replay_speed: float = 1.0) -> AudioSource:
    """The configured audio source (not started)."""
    audio = config.audio
    if audio.source == "file":
        from edged.sources.replay import FileReplay

        return FileReplay(audio.file, sample_rate, audio.block_ms, speed=replay_speed)
    from edged.sources.alsa import AlsaCapture

    return AlsaCapture(audio, sample_rate)


@dataclasses.dataclass
class NewDelivery:
    """What a reload built before touching the running delivery (None: the running one stays)."""

    spool: Spool | None  # another folder, holding a copy of the running spool's unacknowledged turns
    publisher: MqttPublisher | None  # not started

    def undo(self) -> None:
        """The reload is refused after all: remove the copy, close the new spool."""
        if self.spool is not None:
            self.spool.undo_take_over()
            self.spool.close()


def same_folder(a: Path, b: Path) -> bool:
    """Whether two spool paths name one folder (links and bind mounts too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a == b or os.path.realpath(a) == os.path.realpath(b)


class Daemon:
    """``edged run``: owns the config, models, source, pipeline, spool and publisher."""

    def __init__(self, config_path: Path | None, overrides: Sequence[str] = (), replay_speed: float = 1.0):
        self.config_path = config_path
        self.overrides = list(overrides)
        self.replay_speed = replay_speed
        self.config: DaemonConfig = load_config(config_path, self.overrides)
        self.notifier = Notifier()
        self._stop = False
        self._reload = False
        self.started = time.monotonic()
        self.turns_produced = 0  # final turns the pipeline made this run
        self.turns_unspooled = 0  # of those, turns the spool could not write (dropped)
        self.spool = None
        self.publisher = None
        self.stream: Stream | None = None
        self.speakers: SpeakerService | None = None
        self._events_file = None

    # --- lifecycle -------------------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT or the end of a replayed file; exit status."""
        self._install_signals()
        self._apply_logging()
        c = self.config
        self.notifier.status("loading models")
        self.models = self._load_models(c)
        self.speakers = SpeakerService(c, self.models)
        self._open_spool_and_publisher(c)
        try:
            source = open_source(c, self.models.sample_rate, self.replay_speed)
            try:
                source.start()
            except AudioError as exc:
                if c.audio.source != "file":
                    raise
                # a recording that cannot be read will not heal by restarting: a config error (78)
                raise ConfigError(f"audio.file: {exc}") from None
            self.stream = Stream(source, self.speakers.diarizer(self.models, c.pipeline))
            self._open_events_file(c)
            log.info("edged %s: models %s (%s), audio %s, broker %s:%s", c.device, c.models.path, c.models.variant,
                     c.audio.file if c.audio.source == "file" else c.audio.device, c.mqtt.host, c.mqtt.port)
            self.notifier.ready(f"running: device {c.device}")
            self._loop()
        finally:
            self._shutdown()
        return 0

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def request_reload(self, *_: Any) -> None:
        self._reload = True

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)

    def _loop(self) -> None:
        next_stats = time.monotonic() + self.config.mqtt.stats_interval
        while not self._stop:
            if self._reload:
                self._reload = False
                self.reload()
            events = self.stream.poll(READ_TIMEOUT_S)
            self.notifier.watchdog()
            self._emit(events)
            self.speakers.poll(self.stream, self._emit)
            self.speakers.tick(self.stream.diarizer)
            if self.stream.finished:
                log.info("end of %s", self.config.audio.file)
                break
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + self.config.mqtt.stats_interval
                self.publisher.publish_stats(self.stats())

    def _shutdown(self) -> None:
        """Flush the open turns, then always stop the publisher (``offline``) and close the spool."""
        self.notifier.stopping()
        log.info("stopping: flushing the open turns")
        source = self.stream.source if self.stream is not None else None
        speakers = self.speakers
        steps = [("stop the audio source", source.stop if source is not None else None),
                 # before the flush, which ends the stream's speakers
                 ("save the speakers", (lambda: speakers.save(self.stream.diarizer)) if speakers and self.stream else None),
                 ("flush the open turns", (lambda: self._emit(self.stream.flush())) if self.stream else None),
                 ("publish the last stats", (lambda: self.publisher.publish_stats(self.stats()))
                  if self.stream and self.publisher else None),
                 ("stop the speaker commands", speakers.stop if speakers is not None else None),
                 ("stop the MQTT publisher", self.publisher.stop if self.publisher is not None else None),
                 ("close the spool", self.spool.close if self.spool is not None else None),
                 ("close the events file", self._events_file.close if self._events_file is not None else None)]
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # the next steps (offline, closing the spool) matter more
                log.error("stopping: could not %s (%s); going on", what, exc)
        if self.spool is not None:
            log.info("stopped: %s", self.summary())

    def summary(self) -> str:
        """This run's turns: produced, delivered (acknowledged by the broker), dropped, still spooled."""
        delivered = self.spool.acked if self.spool is not None else 0
        depth = self.spool.depth if self.spool is not None else 0
        return (f"{self.turns_produced} turns produced this run, {delivered} delivered, {self.turns_unspooled} "
                f"dropped (could not be spooled); spool depth {depth}")

    # --- pieces ----------------------------------------------------------------------------
    def _apply_logging(self) -> None:
        logging.getLogger("edged").setLevel(LEVELS[self.config.logging.level])

    @staticmethod
    def _load_models(c: DaemonConfig) -> Models:
        return load_models(c.models.path, c.models.variant, threads=c.models.threads,
                           providers=c.models.providers, gamma=c.pipeline.gamma, beta=c.pipeline.beta)

    def _open_spool_and_publisher(self, c: DaemonConfig) -> None:
        from edged.delivery.mqtt import MqttPublisher

        self.spool = Spool(c.spool)
        self.publisher = MqttPublisher(c.mqtt, c.device, self.spool)
        self.publisher.start()
        self.speakers.attach(self.publisher, c)

    def _open_events_file(self, c: DaemonConfig) -> None:
        if self._events_file is not None:
            self._events_file.close()
            self._events_file = None
        if c.logging.events_file is not None:
            self._events_file = open(c.logging.events_file, "a", encoding="utf-8")

    def _emit(self, events: list[Event]) -> None:
        """Spool and publish each event; the events file gets the same payloads."""
        device = self.config.device
        for event in events:
            if isinstance(event, TurnEvent):
                message = TurnMessage.from_event(event, device)
                seq = self._spool_turn(message.payload())
                payload = dataclasses.replace(message, seq=seq).payload()
                log.debug("turn %s %s %.2f-%.2f", seq, event.speaker, event.start, event.end)
            else:
                payload = ActivityMessage.from_event(event, device).payload()
                self.publisher.publish_active(payload)
            if self._events_file is not None:
                self._events_file.write(json.dumps(payload, ensure_ascii=False) + "\n")
                self._events_file.flush()

    def _spool_turn(self, payload: dict[str, Any]) -> int | None:
        """Hand a turn to the publisher (spooled first); its seq, or None when the spool could not
        write it (counted as dropped and logged by the spool; the daemon goes on)."""
        self.turns_produced += 1
        try:
            return self.publisher.publish_turn(payload)
        except SpoolWriteError:
            self.turns_unspooled += 1
            return None

    def stats(self) -> dict[str, Any]:
        """The ``stats`` payload: uptime, step latency, real-time factor, audio and queue figures."""
        diarizer = self.stream.diarizer
        s = diarizer.stats
        p50 = s.percentile(50)
        step_ms = 1e3 * self.config.pipeline.step
        return stats_payload(self.config.device, time.time(), {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "audio_s": round(self.stream.audio_seconds, 1),
            "steps": s.steps,
            "step_ms_p50": None if p50 != p50 else round(p50, 1),
            "step_ms_p95": None if s.steps == 0 else round(s.percentile(95), 1),
            "rtf": None if p50 != p50 else round(p50 / step_ms, 3),
            "speakers": diarizer.num_speakers,
            "turns_produced": self.turns_produced,
            "turns_unspooled": self.turns_unspooled,
            "bad_samples": s.bad_samples,
            "audio": self.stream.source.stats_dict(),
        })

    def _reopen_source(self, old: DaemonConfig, new: DaemonConfig) -> None:
        """Switch to the new audio settings; if the new source cannot start, go back to the old."""
        self.stream.source.stop()
        try:
            source = open_source(new, self.models.sample_rate, self.replay_speed)
            source.start()
        except EdgedError as exc:
            log.error("reload: cannot open the new audio source (%s); keeping the previous one", exc)
            self.config = dataclasses.replace(self.config, audio=old.audio)
            source = self.stream.source
            source.start()
        else:
            log.info("reload: audio source reopened")
        self.stream.replace_source(source)

    def _prepare_delivery(self, old: DaemonConfig, new: DaemonConfig) -> NewDelivery:
        """The spool and publisher the new config needs, built with the running ones untouched:
        another folder is opened and takes a copy of the unacknowledged turns. EdgedError (what
        was built is undone) when that cannot be done, e.g. that folder has no room."""
        from edged.delivery.mqtt import MqttPublisher

        spool = None
        if not same_folder(new.spool.path, old.spool.path):
            spool = Spool(new.spool, require_room=True)
            try:
                spool.take_over(self.spool)
            except EdgedError:
                spool.close()
                raise
        publisher = None
        if spool is not None or new.mqtt != old.mqtt or new.device != old.device:
            try:
                publisher = MqttPublisher(new.mqtt, new.device, spool or self.spool)
            except EdgedError:
                NewDelivery(spool, None).undo()
                raise
        return NewDelivery(spool, publisher)

    def _switch_delivery(self, old: DaemonConfig, new: DaemonConfig, prepared: NewDelivery) -> None:
        """Put the prepared spool and publisher in place (nothing here can be refused)."""
        if prepared.spool is None and new.spool != old.spool:
            self.spool.reconfigure(new.spool)
            log.info("reload: spool limits applied")
        if prepared.publisher is None:
            return
        self.publisher.stop()
        if prepared.spool is not None:
            prepared.spool.finish_take_over(self.spool)
            self.spool = prepared.spool
            log.info("reload: spool moved to %s (%d unacknowledged turn(s) there)", self.spool.path, self.spool.depth)
        self.publisher = prepared.publisher
        self.publisher.start()
        self.speakers.attach(self.publisher, new)
        log.info("reload: MQTT publisher restarted")

    def _refuse_reload(self, exc: Exception) -> None:
        log.error("reload failed, keeping the running config: %s", exc)
        self.notifier.send("READY=1", "STATUS=reload failed; running with the previous config")

    # --- SIGHUP ----------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config; rebuild only what changed. A bad config, or one that needs what
        cannot be built (models, a spool folder without room), keeps the running one whole."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self.overrides)
        except Exception as exc:
            self._refuse_reload(exc)
            return
        old = self.config
        speakers_changed = speaker_settings(new) != speaker_settings(old)
        try:  # build what the new config needs before dropping the running pipeline
            delivery = self._prepare_delivery(old, new)  # first: undone if the rest fails
        except EdgedError as exc:
            self._refuse_reload(exc)
            return
        try:
            models = self.models
            # new profiles folder, state file or thresholds: a new service (reads the profiles now)
            service = SpeakerService(new, models, restore=False) if speakers_changed else self.speakers
            if new.models != old.models or (new.pipeline.gamma, new.pipeline.beta) != (old.pipeline.gamma, old.pipeline.beta):
                models = self._load_models(new)
                diarizer = service.diarizer(models, new.pipeline)
                what = "models reloaded, speaker state reset"
            elif new.pipeline != old.pipeline and not self.stream.diarizer.can_update(new.pipeline):
                diarizer = service.diarizer(models, new.pipeline)
                what = "stream geometry or clustering changed, speaker state reset"
            elif speakers_changed:
                carry = self.speakers.snapshot(self.stream.diarizer)
                diarizer = service.diarizer(models, new.pipeline, carry=carry)
                what = "speakers settings applied, speakers kept"
            else:
                diarizer, what = None, "pipeline parameters applied, speakers kept"
        except BaseException as exc:
            delivery.undo()
            if not isinstance(exc, EdgedError):
                raise
            self._refuse_reload(exc)
            return
        self.config = new
        self._apply_logging()
        if service is not self.speakers:
            self.speakers.cancel_enrollment(self.stream, "the config was reloaded; send it again")
            self.speakers.stop()
            self.speakers = service
        self._switch_delivery(old, new, delivery)  # first: the turns flushed below go to the new spool
        if speakers_changed and delivery.publisher is None:  # a new publisher attached the service already
            service.attach(self.publisher, new)
        if diarizer is not None:
            self._emit(self.stream.replace_diarizer(diarizer))
            self.models = models
            log.info("reload: %s", what)
            if speakers_changed:
                service.save(diarizer)  # where the new config keeps them
        elif new.pipeline != old.pipeline:
            self.stream.diarizer.update_params(new.pipeline)
            log.info("reload: %s", what)
        if new.audio != old.audio:
            self._reopen_source(old, new)
        if new.logging.events_file != old.logging.events_file:
            self._open_events_file(new)
        self.notifier.send("READY=1", "STATUS=running (config reloaded)")
