"""The daemon's named speakers: profiles in the pipeline, state across restarts, MQTT commands.

Owned by the daemon and run on its main thread only. ``speakers.profiles`` (default: ``speakers/`` in the state directory) seeds every
diarizer with the enrolled names; ``speakers.state_file`` keeps the anonymous speakers across
restarts (saved every ``save_interval_s`` and at a clean stop, before the final flush; reloaded
at start when the embedding model and the back-end that saved it, with its shape, match and the
state is younger than ``expiry_h``; either back-end: ``edged.diarize.backend.Persistent``). With
``mqtt.commands`` it runs the commands of ``edged.delivery.commands``; the Home Assistant
"<name> speaking" sensors follow the enrolled names.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edged.config import DaemonConfig
from edged.diarize.events import Event
from edged.diarize.pipeline import StreamingDiarizer
from edged.diarize.stream import Stream
from edged.errors import EdgedError
from edged.models.blocks import Models
from edged.profiles.snapshot import SpeakerState, load_state, save_state
from edged.profiles.store import Profile, ProfileError, ProfileStore
from edged.service.enroll import embedding_sha256, load_identifier, profile_from_audio

log = logging.getLogger(__name__)


def profiles_folder(config: DaemonConfig) -> Path:
    """``speakers.profiles``, else ``speakers/`` in the state directory (the spool's parent)."""
    return config.speakers.profiles or config.spool.path.parent / "speakers"


def state_file(config: DaemonConfig) -> Path | None:
    """Where the speakers are kept across restarts (None: not kept)."""
    if not config.speakers.keep_state:
        return None
    return config.speakers.state_file or config.spool.path.parent / "speakers.state.npz"


def settings(config: DaemonConfig) -> tuple[Any, ...]:
    """What a ``SpeakerService`` is built from: a reload that changes it needs a new service."""
    return profiles_folder(config), state_file(config), config.speakers


class SpeakerService:
    def __init__(self, config: DaemonConfig, models: Models, restore: bool = True):
        """``restore``: the first diarizer takes the speakers saved in the state file (at start;
        a reload carries the running speakers over with ``diarizer(..., carry=)`` instead)."""
        self.config = config
        self.models = models
        s = config.speakers
        self.store = ProfileStore(profiles_folder(config))
        self.identifier = load_identifier(self.store, models, s.threshold, s.voice_threshold)
        self.state_file = state_file(config)
        if len(self.identifier):
            log.info("enrolled speakers: %s", ", ".join(self.identifier.names))
        self.commands: Any = None
        self.publisher: Any = None
        self._restored = not restore
        self._next_save = time.monotonic() + s.save_interval_s
        self._enrolling: dict[str, Any] | None = None

    # --- diarizers ----------------------------------------------------------------------
    def diarizer(self, models: Models, params: Any, carry: SpeakerState | None = None) -> StreamingDiarizer:
        """A diarizer with the names; the first one of the process takes the saved speakers,
        a later one the speakers in ``carry`` (``snapshot`` of the diarizer it replaces)."""
        if models is not self.models:
            self.models = models
            s = self.config.speakers
            self.identifier = load_identifier(self.store, models, s.threshold, s.voice_threshold)
        diarizer = StreamingDiarizer(models, params, identifier=self.identifier)
        if not self._restored:
            self._restored = True
            self._restore(diarizer)
        elif carry is not None and diarizer.identifying is not None:
            self._take(diarizer, carry, "the running speakers")
        return diarizer

    def _state_ok(self, diarizer: StreamingDiarizer) -> bool:
        return self.state_file is not None and diarizer.identifying is not None

    def snapshot(self, diarizer: StreamingDiarizer) -> SpeakerState | None:
        """The diarizer's speakers (None without identification)."""
        backend, wrapper = diarizer.backend, diarizer.identifying
        if wrapper is None:
            return None
        return SpeakerState(backend.state_signature(), backend.state(), wrapper.anonymous_state(),
                            wrapper.named_aliases)

    def _restore(self, diarizer: StreamingDiarizer) -> None:
        if not self._state_ok(diarizer):
            return
        state = load_state(self.state_file, embedding_sha256(self.models), diarizer.backend.state_signature(),
                           self.config.speakers.expiry_h * 3600)
        if state is not None and self._take(diarizer, state, f"speaker state {self.state_file}"):
            log.info("speaker state reloaded from %s: %d speakers", self.state_file, diarizer.backend.num_speakers)

    def _take(self, diarizer: StreamingDiarizer, state: SpeakerState, what: str) -> bool:
        """Give ``diarizer`` the speakers of ``state``; a state that does not fit: one warning, none."""
        backend, wrapper = diarizer.backend, diarizer.identifying
        try:
            ids, sums, counts = (np.asarray(state.anonymous[k]) for k in ("ids", "sums", "counts"))
            if sums.ndim != 2 or not len(ids) == len(sums) == len(counts) or not np.isfinite(sums).all():
                raise ValueError(f"anonymous speakers: {len(ids)} ids, {len(counts)} counts, sums {sums.shape}")
            backend.restore(state.clustering)
            wrapper.restore_anonymous(ids, sums, counts)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
            wrapper.reset()
            log.warning("%s does not fit this pipeline (%s); starting with no known speakers", what, exc)
            return False
        for g, name in state.aliases.items():
            if name in wrapper.slot_names:
                wrapper.alias(g, name)
        return True

    def save(self, diarizer: StreamingDiarizer) -> None:
        """Write the speaker state now (atomically); a failure is logged, never raised."""
        if not self._state_ok(diarizer):
            return
        state = self.snapshot(diarizer)
        try:
            save_state(self.state_file, embedding_sha256(self.models), state)
        except OSError as exc:
            log.warning("cannot save the speaker state to %s (%s)", self.state_file, exc.strerror)

    def tick(self, diarizer: StreamingDiarizer) -> None:
        """Periodic save."""
        if time.monotonic() >= self._next_save:
            self._next_save = time.monotonic() + self.config.speakers.save_interval_s
            self.save(diarizer)

    # --- MQTT ---------------------------------------------------------------------------
    def attach(self, publisher: Any, config: DaemonConfig | None = None) -> None:
        """Start the command client (``mqtt.commands``) and give Home Assistant the names."""
        from edged.delivery.commands import CommandClient
        from edged.delivery.mqtt import resolve_password, tls_context, topic_prefix

        if config is not None and config != self.config:
            self.config = config
        self.publisher = publisher
        publisher.set_people(tuple(self.identifier.names))
        self.stop()
        c = self.config
        if c.mqtt.commands:
            self.commands = CommandClient(c.mqtt, c.device, topic_prefix(c.mqtt, c.device), resolve_password(c.mqtt),
                                          tls_context(c.mqtt))

    def stop(self) -> None:
        if self.commands is not None:
            self.commands.stop()
            self.commands = None

    def cancel_enrollment(self, stream: Stream, reason: str) -> None:
        """Stop an enrollment from live audio that is still listening; its request gets ``reason``."""
        job, self._enrolling = self._enrolling, None
        if job is None:
            return
        stream.taps.remove(job["tap"])
        log.warning("enroll %s cancelled: %s", job["name"], reason)
        if self.commands is not None:
            self.commands.reply({"id": job["command"]["id"], "action": "enroll", "ok": False,
                                 "error": f"enrollment cancelled: {reason}"})

    def poll(self, stream: Stream, emit: Callable[[list[Event]], None]) -> None:
        """Run the queued commands (main thread, between audio blocks)."""
        if self._enrolling is not None and self._enrolling["have"] >= self._enrolling["need"]:
            self._finish_enroll(stream)
        if self.commands is None:
            return
        from edged.delivery.commands import parse_command

        for raw in self.commands.poll():
            request_id, action = None, None
            try:
                command = parse_command(raw)
                request_id, action = command["id"], command["action"]
                result = getattr(self, f"_do_{action}")(command, stream, emit)
            except EdgedError as exc:
                request_id = getattr(exc, "request_id", request_id)
                log.warning("command %s failed: %s", request_id, exc)
                self.commands.reply({"id": request_id, "action": action, "ok": False, "error": str(exc)})
                continue
            if result is not None:
                self.commands.reply({"id": request_id, "action": action, "ok": True, **result})

    def _require_store(self) -> ProfileStore:
        return self.store

    def _do_name(self, command: dict, stream: Stream, emit: Callable) -> dict:
        store = self._require_store()
        wrapper = stream.diarizer.identifying
        speaker = wrapper.anonymous_id(command["speaker"])
        if speaker is None:
            heard = [wrapper.label(g) for g in wrapper.nameable()]
            raise ProfileError(f"unknown speaker {command['speaker']!r}; anonymous speakers heard now: "
                               f"{', '.join(heard) if heard else 'none'}")
        name = command["name"]
        if not command["replace"] and (name in wrapper.identifier.names or store.get(name) is not None):
            raise ProfileError(f"{name!r} is already enrolled; add \"replace\": true or choose another name")
        total, count = wrapper.anonymous_embedding(speaker)
        vector = total / max(np.linalg.norm(total), 1e-12)
        store.save(Profile(name, vector, embedding_sha256(self.models), 0.0, time.time(),
                           (f"{command['speaker']} over MQTT ({count} chunks)",)), replace=command["replace"])
        wrapper.enroll(name, vector)
        wrapper.alias(speaker, name)
        self._names_changed()
        if self.commands is not None:
            self.commands.event({"type": "named", "speaker": command["speaker"], "name": name,
                                 "device_id": self.config.device, "time": time.time()})
        log.info("%s is now %s", command["speaker"], name)
        return {"speaker": command["speaker"], "name": name}

    def _do_enroll(self, command: dict, stream: Stream, emit: Callable) -> None:
        self._require_store()
        if self._enrolling is not None:
            raise ProfileError(f"already enrolling {self._enrolling['name']!r}; wait for its result")
        name = command["name"]
        if not command["replace"] and name in self.identifier.names:
            raise ProfileError(f"{name!r} is already enrolled; add \"replace\": true or choose another name")
        job = {"command": command, "name": name, "need": command["seconds"], "have": 0.0, "blocks": []}

        def tap(block: np.ndarray) -> None:
            if job["have"] < job["need"]:
                job["blocks"].append(np.array(block, dtype=np.float32))
                job["have"] += len(block) / self.models.sample_rate

        job["tap"] = tap
        self._enrolling = job
        stream.taps.append(tap)
        log.info("enrolling %s from the next %g s of audio", name, command["seconds"])
        return None  # the result is sent when the audio is in

    def _finish_enroll(self, stream: Stream) -> None:
        job, self._enrolling = self._enrolling, None
        stream.taps.remove(job["tap"])
        command = job["command"]
        reply = self.commands.reply if self.commands is not None else (lambda r: None)
        try:
            audio = np.concatenate(job["blocks"])
            profile = profile_from_audio(self.models, job["name"], [(f"the last {job['need']:g} s of audio", audio)],
                                         stream.diarizer.params)
            self._require_store().save(profile, replace=command["replace"])
        except EdgedError as exc:
            log.warning("enroll %s failed: %s", job["name"], exc)
            reply({"id": command["id"], "action": "enroll", "ok": False, "error": str(exc)})
            return
        wrapper = stream.diarizer.identifying
        if wrapper is not None and wrapper.identifier is not self.identifier:
            self.identifier.add(profile.name, profile.vector)
        if wrapper is not None:
            wrapper.enroll(profile.name, profile.vector)
        self._names_changed()
        if self.commands is not None:
            self.commands.event({"type": "enrolled", "name": profile.name, "device_id": self.config.device,
                                 "time": time.time()})
        reply({"id": command["id"], "action": "enroll", "ok": True, "name": profile.name,
               "speech_s": round(profile.speech_s, 1)})

    def _do_forget(self, command: dict, stream: Stream, emit: Callable) -> dict:
        store = self._require_store()
        name = command["name"]
        wrapper = stream.diarizer.identifying
        if store.get(name) is None and name not in wrapper.identifier.names:
            known = wrapper.identifier.names
            raise ProfileError(f"unknown speaker {name!r}; enrolled: {', '.join(known) if known else 'none'}")
        if store.get(name) is not None:
            store.remove(name)
        wrapper.forget(name)
        self._names_changed()
        if self.commands is not None:
            self.commands.event({"type": "forgotten", "name": name, "device_id": self.config.device,
                                 "time": time.time()})
        return {"name": name}

    def _do_rename(self, command: dict, stream: Stream, emit: Callable) -> dict:
        """Rename an enrolled speaker: its profile file, the live names, Home Assistant, an event."""
        store = self._require_store()
        old, new = command["name"], command["new_name"]
        wrapper = stream.diarizer.identifying
        stored = store.get(old) is not None
        if not stored and old not in wrapper.identifier.names:
            known = wrapper.identifier.names
            raise ProfileError(f"unknown speaker {old!r}; enrolled: {', '.join(known) if known else 'none'}")
        if new in wrapper.identifier.names or store.get(new) is not None:
            raise ProfileError(f"{new!r} is already enrolled; forget it first or choose another new_name")
        if stored:
            store.rename(old, new)  # ProfileError (one line) when the folder cannot be written
        wrapper.rename(old, new)
        if self.identifier is not wrapper.identifier:
            self.identifier.rename(old, new)
        self.save(stream.diarizer)  # recognised speakers keep the new name across a restart
        self._names_changed()
        if self.commands is not None:
            self.commands.event({"type": "renamed", "name": old, "new_name": new, "device_id": self.config.device,
                                 "time": time.time()})
        log.info("%s is now %s", old, new)
        return {"name": old, "new_name": new}

    def _do_reset(self, command: dict, stream: Stream, emit: Callable) -> dict:
        """Forget the anonymous speakers: end the stream (its open turns are published), start afresh."""
        emit(stream.flush())
        self.save(stream.diarizer)
        return {"speakers": stream.diarizer.num_speakers}

    def _names_changed(self) -> None:
        if self.publisher is not None:
            self.publisher.set_people(tuple(self.identifier.names))
