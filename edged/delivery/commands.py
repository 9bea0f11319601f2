"""MQTT commands (``mqtt.commands: true``): JSON requests on ``<prefix>/command``, one JSON result
per request on ``<prefix>/command/result`` carrying the request's ``id``.

    {"id": "1", "action": "name", "speaker": "speaker_3", "name": "Alice"}
    {"id": "2", "action": "enroll", "name": "Bob", "seconds": 10}
    {"id": "3", "action": "forget", "name": "Alice"}
    {"id": "4", "action": "reset"}
    {"id": "5", "action": "rename", "name": "Alice", "new_name": "Alicia"}

A separate paho client (``<client_id>-cmd``, MQTT 3.1.1, QoS 1) receives them on its own
network thread and queues the raw payloads; the daemon's main thread parses and runs them
between audio blocks (the pipeline is never touched from another thread). ``<prefix>/speaker``
carries speaker events (an anonymous label that became a name, names enrolled, forgotten or
renamed). A rename changes the profile and the names of the turns published from then on; turns
already published keep the old name.
Limit who may publish on ``<prefix>/command`` with a broker ACL (README).
"""

from __future__ import annotations

import json
import logging
import queue
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edged.config import MqttConfig
from edged.diarize.identify import check_name
from edged.errors import EdgedError

log = logging.getLogger(__name__)

# the fields each action takes besides id and action
FIELDS: dict[str, set[str]] = {"name": {"speaker", "name", "replace"}, "enroll": {"name", "seconds", "replace"},
                               "forget": {"name"}, "reset": set(), "rename": {"name", "new_name"}}
ACTIONS = tuple(FIELDS)
MIN_SECONDS, MAX_SECONDS = 5.0, 120.0
_EXAMPLE = '{"id": "1", "action": "forget", "name": "Alice"}'


class CommandError(EdgedError):
    """A command cannot be run (one-line message, sent back as the result's ``error``)."""

    request_id: str | int | None = None  # the bad command's id, when it could be read


def parse_command(raw: bytes | str) -> dict[str, Any]:
    """The checked command (``id`` may be None); CommandError naming the problem and the fix.

    On a bad command the error's ``request_id`` attribute holds the id when one could be read."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"command is not valid JSON ({exc.msg if isinstance(exc, json.JSONDecodeError) else exc}); "
                           f"send an object like {_EXAMPLE}") from None
    if not isinstance(data, dict):
        raise CommandError(f"command must be a JSON object, got {type(data).__name__}; send e.g. {_EXAMPLE}")
    request_id = data.get("id")
    try:
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
            raise CommandError(f"command id must be a string or integer, got {request_id!r}")
        action = data.get("action")
        if action not in ACTIONS:
            raise CommandError(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        allowed = {"id", "action"} | FIELDS[action]
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise CommandError(f"{action} takes no field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        out: dict[str, Any] = {"id": request_id, "action": action}
        if "name" in FIELDS[action]:
            if "name" not in data:
                raise CommandError(f"{action} needs a name, e.g. {{\"action\": \"{action}\", \"name\": \"Alice\"}}")
            out["name"] = check_name(data["name"])
        if action == "name":
            speaker = data.get("speaker")
            if not isinstance(speaker, str) or not speaker:
                raise CommandError('name needs the anonymous speaker to name, e.g. "speaker": "speaker_3"')
            out["speaker"] = speaker
        if action == "rename":
            out["new_name"] = _new_name(data, out["name"])
        if action in ("name", "enroll"):
            replace = data.get("replace", False)
            if not isinstance(replace, bool):
                raise CommandError(f"replace must be true or false, got {replace!r}")
            out["replace"] = replace
        if action == "enroll":
            seconds = data.get("seconds", 10)
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                    or not MIN_SECONDS <= seconds <= MAX_SECONDS:
                raise CommandError(f"seconds={seconds!r} is out of range; give {MIN_SECONDS:g}..{MAX_SECONDS:g} "
                                   "seconds of that person speaking alone")
            out["seconds"] = float(seconds)
        return out
    except EdgedError as exc:
        error = CommandError(str(exc))
        error.request_id = request_id if isinstance(request_id, (str, int)) and not isinstance(request_id, bool) \
            else None
        raise error from None


def _new_name(data: dict[str, Any], name: str) -> str:
    """The checked ``new_name`` of a rename: a valid name other than ``name``."""
    if "new_name" not in data:
        raise CommandError(f'rename needs a new_name, e.g. {{"action": "rename", "name": {json.dumps(name)}, '
                           '"new_name": "Alicia"}')
    try:
        new_name = check_name(data["new_name"])
    except EdgedError as exc:
        raise CommandError(f"new_name: {exc}") from None
    if new_name == name:
        raise CommandError(f"new_name is {name!r} already; give a different new_name")
    return new_name


class CommandClient:
    """Subscribes to ``<prefix>/command``; ``poll`` hands the queued payloads to the caller."""

    QUEUE = 100

    def __init__(self, config: MqttConfig, device_id: str, prefix: str, password: str | None, context: Any):
        self.topic = f"{prefix}/command"
        self.result_topic = f"{prefix}/command/result"
        self.event_topic = f"{prefix}/speaker"
        self._queue: queue.Queue[bytes] = queue.Queue(self.QUEUE)
        client_id = f"{config.client_id or f'edged-{device_id}'}-cmd"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                                  clean_session=True)
        if config.username:
            self.client.username_pw_set(config.username, password)
        if context is not None:
            self.client.tls_set_context(context)
            if config.tls_insecure:
                self.client.tls_insecure_set(True)
        self.client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = False
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.connect_async(config.host, config.port, config.keepalive)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)
            log.info("listening for commands on %s", self.topic)

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        if message.retain:  # a command left retained on the broker is stale: never run it at start
            log.warning("ignored a retained command on %s; publish commands without the retain flag", self.topic)
            return
        try:
            self._queue.put_nowait(bytes(message.payload))
        except queue.Full:
            log.warning("command queue full (%d); a command was dropped", self.QUEUE)

    def poll(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def reply(self, result: dict[str, Any]) -> None:
        self.client.publish(self.result_topic, json.dumps(result, ensure_ascii=False), qos=1)

    def event(self, payload: dict[str, Any]) -> None:
        self.client.publish(self.event_topic, json.dumps(payload, ensure_ascii=False), qos=1)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
