"""Home Assistant entities for enrolled people: one binary sensor "<name> speaking" each.

Only names leave the device. A forgotten name's component is sent once more with only its
``platform`` key, which removes the entity from the device in Home Assistant's device discovery.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable


def person_key(name: str) -> str:
    """A stable, topic- and id-safe key for a name (names may hold any printable character)."""
    return "person_" + hashlib.sha256(name.encode()).hexdigest()[:12]


def people_components(node: str, active_topic: str, people: Iterable[str],
                      forgotten: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``components`` entries of the device discovery payload for these people."""
    out: dict[str, dict[str, Any]] = {}
    for name in forgotten:
        out[f"{node}_{person_key(name)}"] = {"platform": "binary_sensor"}
    for name in people:
        uid = f"{node}_{person_key(name)}"
        literal = json.dumps(name)  # a Jinja string literal (double quotes, escapes as JSON)
        out[uid] = {"platform": "binary_sensor", "name": f"{name} speaking", "unique_id": uid,
                    "state_topic": active_topic, "device_class": "sound",
                    "value_template": "{{ 'ON' if " + literal + " in value_json.speakers else 'OFF' }}",
                    "icon": "mdi:account-voice"}
    return out
