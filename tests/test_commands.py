"""MQTT command parsing (``edged.delivery.commands.parse_command``): every bad command is one
line naming the problem, with the request id kept when it could be read."""

from __future__ import annotations

import json

import pytest

from edged.delivery.commands import CommandError, parse_command


def refused(payload, *words: str) -> CommandError:
    raw = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    with pytest.raises(CommandError) as exc:
        parse_command(raw)
    message = str(exc.value)
    assert "\n" not in message, message
    for w in words:
        assert w in message, message
    return exc.value


def test_rename_is_parsed():
    assert parse_command(json.dumps({"id": "5", "action": "rename", "name": "Alice", "new_name": "Alicia"})) == \
        {"id": "5", "action": "rename", "name": "Alice", "new_name": "Alicia"}
    assert parse_command(b'{"action": "rename", "name": "Zo\xc3\xab", "new_name": "O\'Brien"}')["new_name"] == "O'Brien"


@pytest.mark.parametrize("command, words", [
    ({"id": "r", "action": "rename", "name": "Alice"}, ("rename needs a new_name", '"name": "Alice"')),
    ({"id": "r", "action": "rename", "new_name": "Alicia"}, ("rename needs a name",)),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "Alice"}, ("'Alice' already", "different")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "Alicia", "replace": True},
     ("rename takes no field(s) replace", "allowed: action, id, name, new_name")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": None}, ("new_name: ", "must be text")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": 7}, ("new_name: ", "must be text")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": ["Bob"]}, ("new_name: ", "must be text")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": ""}, ("new_name: ", "empty")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "a/b"}, ("new_name: ", "'/'")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "a+b"}, ("new_name: ", "'+'")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "#"}, ("new_name: ", "'#'")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "a\nb"}, ("new_name: ", "control character")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "a\x00b"}, ("new_name: ", "control character")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "a\u200bb"}, ("new_name: ", "control character")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "x" * 65}, ("new_name: ", "65 characters",
                                                                                 "at most 64")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "Alice Smith"}, ("new_name: ", "Alice_Smith")),
    ({"id": "r", "action": "rename", "name": "Alice", "new_name": "speaker_2"}, ("new_name: ", "anonymous")),
    ({"id": "r", "action": "rename", "name": "a/b", "new_name": "Alicia"}, ("'/'",)),
    ({"id": "r", "action": "rename", "name": "edged/+/#", "new_name": "Alicia"}, ("'/'",)),
    ({"id": "r", "action": "rename", "name": "\x1b[2J", "new_name": "Alicia"}, ("control character",)),
    ({"id": "r", "action": "rename", "name": "y" * 200, "new_name": "Alicia"}, ("200 characters",)),
])
def test_bad_rename_is_refused_with_the_fix_and_keeps_the_id(command, words):
    assert refused(command, *words).request_id == "r"


def test_hostile_ids_and_payloads_are_refused():
    assert refused({"id": ["x"], "action": "rename", "name": "A", "new_name": "B"}, "id must be").request_id is None
    assert refused({"id": True, "action": "reset"}, "id must be").request_id is None
    assert refused(b"\xff\xfe", "not valid JSON").request_id is None
    assert refused('["rename"]', "must be a JSON object, got list").request_id is None
    assert refused({"id": 3, "action": "RENAME", "name": "A", "new_name": "B"},
                   "unknown action 'RENAME'", "rename").request_id == 3


def test_the_other_actions_still_parse():
    assert parse_command('{"action": "forget", "name": "Alice"}') == {"id": None, "action": "forget", "name": "Alice"}
    assert parse_command('{"id": 1, "action": "reset"}') == {"id": 1, "action": "reset"}
    assert parse_command('{"action": "enroll", "name": "Bob"}')["seconds"] == 10.0
    assert refused({"id": "f", "action": "forget", "name": "A", "new_name": "B"}, "forget takes no field(s) new_name")
