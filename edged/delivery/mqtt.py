"""MQTT publisher: durable speaker turns, retained status and ``active``, periodic stats and
optional Home Assistant discovery, over paho-mqtt 2 (callback API version 2).

Topics under ``mqtt.topic_prefix`` (default ``edged/<device_id>``):

- ``status``: ``online`` / ``offline``, retained, QoS 1. ``offline`` is also the last will:
  the broker publishes it when the connection dies without a DISCONNECT (crash, power cut).
- ``turn``: one JSON object per finished turn, QoS 1, not retained, with a durable ``seq``.
- ``active``: JSON, who is speaking now, QoS 1, retained (the latest only; not spooled,
  re-sent on every connect).
- ``stats``: JSON, QoS 0, not retained, every ``mqtt.stats_interval`` (sent by the daemon;
  the publisher adds ``reconnects``, ``mqtt_protocol``, the delivery and the spool figures).
- ``health``: JSON, QoS 1, retained, on every connect and whenever it changes: ``ok`` and the
  one-line ``problems`` that lose or hold back turns (the broker refusing them, a spool that
  cannot be written).

Home Assistant (``mqtt.homeassistant: true``): one retained device-discovery config
(HA 2024.11+) on ``<discovery_prefix>/device/edged_<device_id>/config``, availability from
``status``; sensors "Speaker" and "Speakers count" (from ``active``), "Last speaker" (from
``turn``), diagnostics "MQTT reconnects" and "Spool depth" (from ``stats``) and "Problems"
(from ``health``).

Delivery (at-least-once): ``publish_turn`` appends the turn to the spool (fsync'd) and
returns. One sender thread owns the paho client (connect, network loop, reconnects): once the
broker accepted the connection it hands spool records to paho in seq order, at most
``WINDOW`` unacknowledged at a time; a PUBACK acks the record in the spool. After a reconnect
paho first re-sends the records it held, and only then does the thread hand newer ones, so
new turns reach the broker in seq order; a restarted process resends ``spool.pending()``. A
re-sent turn repeats an earlier ``seq`` (consumers deduplicate on it). Reconnects back off
from ``reconnect_min_s``, doubling up to ``reconnect_max_s``. A turn the broker refuses
(MQTT 5 PUBACK with a failure code, e.g. not authorized by its ACL) stays in the spool: it is
logged once with the fix, counted in ``rejected`` (refusals, not turns), reported on
``health``, and after the turns in flight are answered the sender waits (same backoff) and
sends again from the oldest unacknowledged turn, one at a time until the broker accepts one.

``protocol: auto`` connects with MQTT 5 and, when the broker refuses it (CONNACK
"unsupported protocol version"), reconnects with MQTT 3.1.1 and stays there, with a warning:
a 3.1.1 broker acknowledges a publish its ACL denies as if it were delivered, so such a
refusal cannot be seen (``edged check`` detects it with a probe).

Passwords (``mqtt.password``, ``mqtt.password_file`` or ``$EDGED_MQTT_PASSWORD``, in that
order) are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edged import __version__
from edged.config import MqttConfig
from edged.errors import ConfigError, EdgedError
from edged.delivery.people import people_components
from edged.delivery.spool import Spool

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGED_MQTT_PASSWORD"
# spool records handed to paho and not yet acknowledged, at most
WINDOW = 100
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
# CONNACK "Unsupported protocol version" (MQTT 5 code; paho maps a 3.1.1 broker's code 1 to it)
_UNSUPPORTED_PROTOCOL = 0x84
_LOGIN_REFUSED = {0x86, 0x87, 0x8C}  # bad user name or password, not authorized, bad auth method
_SESSION_TAKEN_OVER = 0x8E
# PUBACK failure codes -> what to change
_REFUSAL_FIX = {
    0x87: "allow this client to publish on {topic} in the broker's ACL",
    0x90: "fix mqtt.topic_prefix",
    0x95: "raise the broker's message_size_limit / max_packet_size",
    0x97: "raise the broker's quota for this client",
}


@dataclass(frozen=True)
class Topics:
    """The publisher's topics."""

    status: str
    turn: str
    active: str
    stats: str
    health: str

    @classmethod
    def under(cls, prefix: str) -> Topics:
        return cls(f"{prefix}/status", f"{prefix}/turn", f"{prefix}/active", f"{prefix}/stats", f"{prefix}/health")


def topic_prefix(config: MqttConfig, device_id: str) -> str:
    """``mqtt.topic_prefix`` or ``edged/<device_id>``."""
    return config.topic_prefix or f"edged/{device_id}"


def resolve_password(config: MqttConfig, environ: dict[str, str] | None = None) -> str | None:
    """``mqtt.password``, else the contents of ``mqtt.password_file``, else ``$EDGED_MQTT_PASSWORD``."""
    if config.password is not None:
        return config.password
    if config.password_file is not None:
        try:
            mode = Path(config.password_file).stat().st_mode
            if mode & 0o004:
                log.warning("mqtt.password_file=%s is readable by every user (mode %04o); chmod 600 it",
                            config.password_file, mode & 0o7777)
            text = Path(config.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"mqtt.password_file={config.password_file} cannot be read ({reason}); "
                              "fix the path or its permissions") from None
        password = text.rstrip("\r\n")
        if not password:
            raise ConfigError(f"mqtt.password_file={config.password_file} is empty; write the password into it")
        return password
    env = os.environ if environ is None else environ
    password = env.get(PASSWORD_ENV) or None
    if password is not None and not config.username:
        raise ConfigError(f"${PASSWORD_ENV} is set but mqtt.username is not; set mqtt.username")
    return password


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context for ``mqtt.tls`` (None when off); ConfigError naming a missing file."""
    if not config.tls:
        return None
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(config, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"mqtt.{name}={path} does not exist; fix the path")
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.cert_file is not None:
            context.load_cert_chain(str(config.cert_file), str(config.key_file) if config.key_file else None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"mqtt TLS files cannot be loaded ({exc}); check mqtt.ca_file, mqtt.cert_file "
                          "and mqtt.key_file (PEM)") from None
    if config.tls_insecure:
        context.check_hostname = False
    return context


def discovery(config: MqttConfig, device_id: str, people: tuple[str, ...] = (),
              forgotten: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """Home Assistant device-discovery topic and payload (HA 2024.11+); ``people``: enrolled
    names, one "<name> speaking" binary sensor each (``edged.delivery.people``)."""
    prefix = topic_prefix(config, device_id)
    topics = Topics.under(prefix)
    node = f"edged_{device_id}"

    def sensor(key: str, name: str, state_topic: str, template: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        uid = f"{node}_{key}"
        return uid, {"platform": "sensor", "name": name, "unique_id": uid, "state_topic": state_topic,
                     "value_template": template, **extra}

    components = dict([
        sensor("speaker", "Speaker", topics.active,
               "{{ value_json.speakers | join(', ') if value_json.speakers else 'none' }}", icon="mdi:account-voice"),
        sensor("speakers_count", "Speakers count", topics.active, "{{ value_json.speakers | length }}",
               state_class="measurement", icon="mdi:account-multiple"),
        sensor("last_speaker", "Last speaker", topics.turn, "{{ value_json.speaker }}",
               json_attributes_topic=topics.turn, icon="mdi:account-voice"),
        sensor("reconnects", "MQTT reconnects", topics.stats, "{{ value_json.reconnects }}",
               state_class="total_increasing", entity_category="diagnostic"),
        sensor("spool_depth", "Spool depth", topics.stats, "{{ value_json.spool_depth }}",
               state_class="measurement", entity_category="diagnostic"),
        sensor("problems", "Problems", topics.health,
               "{{ value_json.problems | join('; ') if value_json.problems else 'none' }}",
               entity_category="diagnostic", icon="mdi:alert-circle-outline"),
    ])
    components.update(people_components(node, topics.active, people, forgotten))
    payload = {
        "device": {"identifiers": [node], "name": f"edged {device_id}", "manufacturer": "edged",
                   "model": "live speaker diarization", "sw_version": __version__},
        "origin": {"name": "edged", "sw_version": __version__},
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "components": components,
    }
    return f"{config.discovery_prefix}/device/{node}/config", payload


def _client(config: MqttConfig, client_id: str, protocol: str, userdata: Any, password: str | None,
            context: ssl.SSLContext | None, retry: bool = True) -> paho.Client:
    version = PROTOCOLS[protocol]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, userdata=userdata, protocol=version,
                         clean_session=True if version == paho.MQTTv311 else None, reconnect_on_failure=retry)
    if config.username:
        client.username_pw_set(config.username, password)
    if context is not None:
        client.tls_set_context(context)
        if config.tls_insecure:
            client.tls_insecure_set(True)
    client.reconnect_delay_set(config.reconnect_min_s, config.reconnect_max_s)  # type: ignore[arg-type]
    if log.isEnabledFor(logging.DEBUG):  # paho's own lines (never the password) only when debugging
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
    return client


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class MqttPublisher:
    """Publishes turns (spooled, QoS 1), ``active``, ``stats`` and ``status`` for one device.

    One sender thread owns the paho client: it connects and reconnects (backoff), runs the
    network loop, applies PUBACKs to the spool and hands spooled turns to paho only once the
    broker accepted the connection, after paho re-sent what it already held. Keeping paho on
    one thread is what guarantees seq order across reconnects.
    """

    LOOP_S = 0.05  # network loop wait; a new turn leaves within about this

    def __init__(self, config: MqttConfig, device_id: str, spool: Spool):
        self.config = config
        self.device_id = device_id
        self.spool = spool
        self.prefix = topic_prefix(config, device_id)
        self.topics = Topics.under(self.prefix)
        self.client_id = config.client_id or f"edged-{device_id}"
        self._password = resolve_password(config)
        self._context = tls_context(config)
        # the protocol in use ("5" or "3.1.1"); auto starts with 5
        self.protocol = "3.1.1" if config.protocol == "3.1.1" else "5"
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.rejected = 0  # PUBACK refusals of turns (a turn refused twice counts twice)
        self.rejection: str | None = None  # the last refusal, None once the broker accepts a turn again
        self.last_error: str | None = None
        self._client: paho.Client | None = None
        self._handed: dict[int, int] = {}  # paho mid -> seq, for the current client
        self._handed_upto = 0
        self._active: bytes | None = None
        self._active_sent: bytes | None = None
        self._stats: bytes | None = None
        self._fallback = False
        self._rewind = False  # a turn was refused: send again from the oldest unacknowledged one
        self._retry_at = 0.0
        self._refusal_delay = config.reconnect_min_s
        self._health_sent: bytes | None = None
        self._unreachable_logged = False
        self.people: tuple[str, ...] = ()  # enrolled names (Home Assistant binary sensors)
        self._forgotten: tuple[str, ...] = ()
        self._discovery_due = False
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.config.tls else 'mqtt'}://{self.config.host}:{self.config.port}"

    # --- lifecycle (caller's thread) ------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (non-blocking) and start sending spooled turns."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._client = self._new_client()
        self._thread = threading.Thread(target=self._run, name="edged-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` s for unacknowledged turns, publish ``offline``, disconnect."""
        if self._thread is None:
            return
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        # a reconnect attempt in progress may take up to paho's connect timeout (5 s) first
        self._thread.join(timeout + 15.0)
        self._thread = None
        self.connected = False
        log.info("MQTT publisher stopped (spool depth %d)", self.spool.depth)

    # --- publishing (any thread) ----------------------------------------------------------
    def publish_turn(self, payload: dict[str, Any]) -> int:
        """Spool the turn durably; the sender thread publishes it (QoS 1) in seq order. Its seq."""
        return int(self.spool.append(payload)["seq"])

    def publish_active(self, payload: dict[str, Any]) -> None:
        """Retained QoS 1 ``active`` (latest only; re-sent on every connect)."""
        self._active = _json(payload)

    def set_people(self, people: tuple[str, ...] | list[str]) -> None:
        """Enrolled names changed: republish the Home Assistant discovery (forgotten names removed)."""
        people = tuple(people)
        self._forgotten = tuple(sorted((set(self.people) | set(self._forgotten)) - set(people)))
        self.people = people
        self._discovery_due = True

    def publish_stats(self, payload: dict[str, Any]) -> None:
        """QoS 0 ``stats`` with the publisher's figures added; dropped while disconnected."""
        if not self.connected:
            return
        data = dict(payload)
        data.update(self.figures())
        self._stats = _json(data)

    def figures(self) -> dict[str, Any]:
        """Delivery and spool figures: ``turns_delivered`` (acknowledged by the broker, this run),
        ``spool_dropped`` (lost by the spool since it was made: ``_full`` by ``spool.max_bytes``,
        ``_nospace`` unwritable), ``rejected`` (refusals this run; the turns stay spooled)."""
        return {
            "reconnects": self.reconnects,
            "mqtt_protocol": self.protocol,
            "turns_delivered": self.spool.acked,
            "spool_depth": self.spool.depth,
            "spool_dropped": self.spool.dropped,
            "spool_dropped_full": self.spool.dropped_full,
            "spool_dropped_nospace": self.spool.dropped_nospace,
            "spool_corrupt": self.spool.skipped_corrupt,
            "rejected": self.rejected,
        }

    def problems(self) -> list[str]:
        """One line per condition that loses or holds back turns now."""
        return [p for p in (self.rejection, self.spool.write_error) if p]

    # --- sender thread --------------------------------------------------------------------
    def _new_client(self) -> paho.Client:
        self._handed = {}
        self._handed_upto = 0
        client = _client(self.config, self.client_id, self.protocol, None, self._password, self._context)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        return client

    def _run(self) -> None:
        delay = self.config.reconnect_min_s
        next_attempt = 0.0
        is_open = False
        while not self._stopping.is_set():
            client = self._client
            assert client is not None
            try:
                if not is_open:
                    wait = next_attempt - time.monotonic()
                    if wait > 0:
                        self._stopping.wait(min(wait, 0.5))
                        continue
                    try:
                        client.reconnect()
                        is_open = True
                    except (OSError, ValueError) as exc:
                        self._unreachable(exc)
                        next_attempt, delay = time.monotonic() + delay, min(2 * delay, self.config.reconnect_max_s)
                        continue
                rc = client.loop(self.LOOP_S)
                if self._fallback:
                    self._fallback = False
                    log.warning("%s refused MQTT 5; reconnecting with MQTT 3.1.1, under which the broker "
                                "acknowledges turns its ACL denies as if delivered: run edged check to see that "
                                "publishing on %s is allowed", self.url, self.topics.turn)
                    self.protocol = "3.1.1"
                    client.disconnect()
                    self._client = self._new_client()
                    is_open, next_attempt = False, 0.0
                    continue
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    is_open = False
                    self.connected = False
                    next_attempt, delay = time.monotonic() + delay, min(2 * delay, self.config.reconnect_max_s)
                    continue
                if self.connected:
                    delay = self.config.reconnect_min_s
                    self._send(client)
            except Exception:  # keep going: the spool still holds every turn
                log.exception("MQTT sender error")
                is_open = False
                self.connected = False
                next_attempt = time.monotonic() + delay
        self._shutdown(self._client, is_open)

    def _send(self, client: paho.Client) -> None:
        """Latest active, health and stats, then the next spooled turns in seq order (WINDOW at
        most; after a refusal, once the backoff passed, again from the oldest, one at a time)."""
        active = self._active
        if active is not None and active is not self._active_sent:
            client.publish(self.topics.active, active, qos=1, retain=True)
            self._active_sent = active
        problems = self.problems()
        health = _json({"device_id": self.device_id, "ok": not problems, "problems": problems})
        if health != self._health_sent:
            client.publish(self.topics.health, health, qos=1, retain=True)
            self._health_sent = health
        if self._discovery_due and self.config.homeassistant:
            self._discovery_due = False
            self._publish_discovery(client)
        stats, self._stats = self._stats, None
        if stats is not None:
            client.publish(self.topics.stats, stats, qos=0)
        if self._rewind:
            if self._handed or time.monotonic() < self._retry_at:
                return
            self._rewind = False
            self._handed_upto = 0
        room = (1 if self.rejection else WINDOW) - len(self._handed)
        if room <= 0:
            return
        for record in self.spool.pending(after=self._handed_upto, limit=room):
            info = client.publish(self.topics.turn, _json(record), qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("paho refused turn seq %s (%s); retrying", record["seq"], paho.error_string(info.rc))
                return
            self._handed[info.mid] = record["seq"]
            self._handed_upto = record["seq"]

    def _shutdown(self, client: paho.Client | None, is_open: bool) -> None:
        if client is None:
            return
        deadline = self._stop_deadline
        try:
            if self.connected:
                self._send(client)  # the last active and stats, before "offline"
            while self.connected and (self._handed or self.spool.depth) and time.monotonic() < deadline:
                if client.loop(self.LOOP_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if self.connected:
                    self._send(client)
            if self.connected:
                info = client.publish(self.topics.status, "offline", qos=1, retain=True)
                until = max(deadline, time.monotonic() + 0.5)
                while self.connected and not info.is_published() and time.monotonic() < until:
                    if client.loop(self.LOOP_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
            if is_open:
                client.disconnect()
        except Exception:
            log.exception("MQTT shutdown error")

    def _unreachable(self, exc: BaseException) -> None:
        if not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning("cannot reach the MQTT broker at %s (%s); retrying every %g..%g s, turns are spooled",
                        self.url, getattr(exc, "strerror", None) or exc, self.config.reconnect_min_s,
                        self.config.reconnect_max_s)

    # --- paho callbacks (run inside client.loop on the sender thread) ---------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if self.config.protocol == "auto" and self.protocol == "5" and reason.value == _UNSUPPORTED_PROTOCOL:
                self._fallback = True
                return
            error = f"{self.url} refused the connection: {reason}"
            if reason.value in _LOGIN_REFUSED:
                error += "; check mqtt.username and the password"
            if error != self.last_error:
                log.error("%s (retrying)", error)
            self.last_error = error
            return
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self.last_error = None
        self._unreachable_logged = False
        log.info("connected to %s as %s (MQTT %s)%s", self.url, self.client_id, self.protocol,
                 f", reconnect {self.reconnects}" if self.reconnects else "")
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._health_sent = None  # re-send health on every connect
        if self.config.homeassistant:
            self._discovery_due = False
            self._publish_discovery(client)
        self._active_sent = None  # re-send the latest active on every connect

    def _publish_discovery(self, client: paho.Client) -> None:
        topic, config = discovery(self.config, self.device_id, self.people, self._forgotten)
        client.publish(topic, _json(config), qos=1, retain=True)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected, self.connected = self.connected, False
        if was_connected and not self._stopping.is_set():
            log.warning("MQTT connection to %s lost (%s); reconnecting, turns are spooled", self.url,
                        lost_reason(reason, flags, self.client_id))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        seq = self._handed.pop(mid, None)
        if seq is None:
            return  # status, active, health, discovery
        if reason is not None and reason.is_failure:
            self._refused(seq, reason)
            return
        if self.rejection is not None:
            log.warning("%s accepts turns again (turn seq %d); sending the held ones", self.url, seq)
            self.rejection = None
        self._refusal_delay = self.config.reconnect_min_s
        self.spool.ack(seq)

    def _refused(self, seq: int, reason: Any) -> None:
        """A PUBACK failure: keep the turn, back off, send again from the oldest unacknowledged one."""
        self.rejected += 1
        fix = _REFUSAL_FIX.get(reason.value, "check the broker's log and its limits for this client")
        message = (f"{self.url} refused turn seq {seq} on {self.topics.turn} ({reason}); it stays in the "
                   f"spool and is sent again: {fix.format(topic=self.topics.turn)}")
        if self.rejection is None:
            log.warning("%s", message)
        else:
            log.debug("%s", message)
        self.rejection = message
        self._rewind = True
        self._retry_at = time.monotonic() + self._refusal_delay
        self._refusal_delay = min(2 * self._refusal_delay, self.config.reconnect_max_s)


def lost_reason(reason: Any, flags: Any, client_id: str) -> str:
    """Why a connection ended, with the fix when the cause is known or likely."""
    value = getattr(reason, "value", None)
    from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
    if value == _SESSION_TAKEN_OVER:
        return (f"another client connected with client id {client_id!r} and took the session over; give each "
                "device its own device_id or mqtt.client_id")
    if not from_server and value == 0x80:  # paho's "Unspecified error": the socket just closed
        return (f"the broker closed the connection: it restarted, or another client connected with client id "
                f"{client_id!r}; if this repeats, give each device its own device_id or mqtt.client_id")
    return str(reason)


# --- edged check -------------------------------------------------------------------------
PROBE_TYPE = "probe"


def check_broker(config: MqttConfig, device_id: str, timeout: float = 5.0) -> str:
    """Log in to the broker once and publish a probe on the turn topic (QoS 1, payload
    ``{"type": "probe", ...}``, which consumers skip as it is no turn); a one-line description,
    or EdgedError naming the problem. MQTT 5: the PUBACK says whether publishing is permitted.
    MQTT 3.1.1 acknowledges a denied publish too: the probe must come back to a subscription."""
    password = resolve_password(config)
    context = tls_context(config)
    client_id = f"{config.client_id or f'edged-{device_id}'}-check"
    url = f"{'mqtts' if config.tls else 'mqtt'}://{config.host}:{config.port}"
    order = ["5", "3.1.1"] if config.protocol == "auto" else [config.protocol]
    topic = Topics.under(topic_prefix(config, device_id)).turn
    probe = _json({"type": PROBE_TYPE, "device_id": device_id, "by": "edged check"})
    for protocol in order:
        error = _probe(config, client_id, protocol, password, context, timeout, url, (topic, probe))
        if error is None:
            who = f"user {config.username}" if config.username else "anonymous"
            tls = ", TLS" + (" with client certificate" if config.cert_file else "") if config.tls else ""
            return f"{url} accepted {who} (MQTT {protocol}{tls}) and a probe on {topic}"
        if error == "unsupported" and protocol != order[-1]:
            continue
        if error == "unsupported":
            raise EdgedError(f"{url} does not support MQTT {protocol}; set mqtt.protocol to "
                             f"{'3.1.1' if protocol == '5' else 'auto'}")
        raise EdgedError(error)
    raise AssertionError("unreachable")


def _probe(config: MqttConfig, client_id: str, protocol: str, password: str | None,
           context: ssl.SSLContext | None, timeout: float, url: str,
           publish: tuple[str, bytes] | None = None) -> str | None:
    """None when the broker accepted the login (and the ``(topic, payload)`` publish); "unsupported"
    or a one-line error otherwise."""
    done = threading.Event()
    result: dict[str, Any] = {}
    published = threading.Event()
    subscribed = threading.Event()
    echoed = threading.Event()

    def on_publish(client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        result["puback"] = reason
        published.set()

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        result["suback"] = reasons[0] if reasons else None
        subscribed.set()

    def on_message(client: paho.Client, userdata: Any, msg: Any) -> None:
        if publish is not None and msg.topic == publish[0] and msg.payload == publish[1]:
            echoed.set()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        result.setdefault("reason", reason)
        done.set()

    def on_disconnect(client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        result.setdefault("closed", reason)
        done.set()

    client = _client(config, client_id, protocol, None, password, context, retry=False)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect_timeout = timeout
    where = f"{config.host}:{config.port}"
    try:
        client.connect(config.host, config.port, config.keepalive)
    except ssl.SSLError as exc:
        return (f"TLS handshake with {where} failed ({exc.reason or exc}); check mqtt.ca_file, mqtt.cert_file/"
                "key_file, or that the port is a TLS listener")
    except socket.gaierror:
        return f"cannot resolve MQTT host {config.host!r}; fix mqtt.host"
    except ConnectionRefusedError:
        return f"nothing listens on {where} (connection refused); start the broker or fix mqtt.host/mqtt.port"
    except (TimeoutError, socket.timeout):
        return f"no answer from {where} within {timeout:g} s; check mqtt.host/mqtt.port and the firewall"
    except OSError as exc:
        hint = f"; is {where} a TLS listener?" if config.tls else "; check mqtt.host/mqtt.port"
        return f"cannot connect to {where} ({exc.strerror or exc}){hint}"
    client.loop_start()
    try:
        done.wait(timeout)
        reason = result.get("reason")
        if publish is not None and reason is not None and not reason.is_failure:
            return _probe_publish(client, protocol, publish, timeout, url, result, published, subscribed, echoed)
    finally:
        client.disconnect()
        client.loop_stop()
    if reason is None:
        if "closed" in result:
            hint = (" (TLS: does the broker require a client certificate, mqtt.cert_file?)" if config.tls
                    else "; is it a TLS port (set mqtt.tls: true)?")
            return f"{url} closed the connection before accepting the login{hint}"
        return f"no CONNACK from {url} within {timeout:g} s; check that it is an MQTT broker port"
    if not reason.is_failure:
        return None
    if reason.value == _UNSUPPORTED_PROTOCOL:
        return "unsupported"
    if reason.value in _LOGIN_REFUSED:
        who = f"user {config.username!r}" if config.username else "an anonymous client"
        return (f"{url} refused the login of {who}: {reason}; check mqtt.username and the password "
                f"(mqtt.password, mqtt.password_file or ${PASSWORD_ENV})")
    return f"{url} refused the connection: {reason}"


def _probe_publish(client: paho.Client, protocol: str, publish: tuple[str, bytes], timeout: float, url: str,
                   result: dict[str, Any], published: threading.Event, subscribed: threading.Event,
                   echoed: threading.Event) -> str | None:
    """Publish the probe on a connected client; None when the broker took it, else a one-line error."""
    topic, payload = publish
    if protocol == "3.1.1":  # the PUBACK says nothing: the probe has to come back
        client.subscribe(topic, qos=1)
        if not subscribed.wait(timeout):
            return f"no SUBACK from {url} within {timeout:g} s for {topic}"
    client.publish(topic, payload, qos=1)
    if not published.wait(timeout):
        return f"no PUBACK from {url} within {timeout:g} s for a probe on {topic}; check the broker's log"
    puback = result.get("puback")
    if puback is not None and puback.is_failure:
        fix = _REFUSAL_FIX.get(puback.value, "check the broker's log and its limits for this client")
        return f"{url} refused a publish on {topic} ({puback}); turns would wait in the spool: {fix.format(topic=topic)}"
    if protocol == "3.1.1" and not echoed.wait(timeout):
        return (f"a probe published on {topic} did not come back within {timeout:g} s: the broker's ACL denies "
                "this client publishing (or reading) there, and MQTT 3.1.1 acknowledges a denied publish as if "
                "delivered, so turns would be lost: allow it readwrite on the topic, or use mqtt.protocol: 5")
    return None
