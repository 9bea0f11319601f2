"""sd_notify over a real unix datagram socket, as systemd receives it."""

from __future__ import annotations

import os
import socket

import pytest

from edged.service.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_status_stopping_reach_the_socket(listener):
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled and n.ready("models loaded")
    assert sock.recv(4096) == b"READY=1\nSTATUS=models loaded"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.close()


def test_abstract_socket_address():
    name = f"edged-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
    finally:
        sock.close()


def test_watchdog_pings_at_half_interval_only_for_this_pid(listener):
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == 1.0
    assert n.watchdog(now=100.0)
    assert not n.watchdog(now=100.5)
    assert n.watchdog(now=101.0)
    assert sock.recv(4096) == b"WATCHDOG=1" and sock.recv(4096) == b"WATCHDOG=1"
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None and not other.watchdog()


def test_outside_systemd_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled and not n.ready() and not n.watchdog()


def test_a_vanished_socket_is_logged_not_fatal(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not n.ready()
    assert "sd_notify" in caplog.text
