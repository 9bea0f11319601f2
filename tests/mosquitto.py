"""Test helper: a real mosquitto broker on free 127.0.0.1 ports, with a generated config in a
temporary folder; optional password file and TLS listener (a CA, a server and a client
certificate made with the ``openssl`` CLI). It can be stopped and started again on the same
ports to simulate outages. Also ``V311OnlyProxy``: a TCP proxy in front of a broker that
refuses MQTT 5 like a 3.1.1-only broker and forwards everything else.

Missing binaries fail the test with the apt package to install (never skip).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def require(binary: str, package: str) -> str:
    """Path of ``binary``; fails the test naming the apt package when it is missing."""
    found = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.is_file()), None)
    if found is None:
        pytest.fail(f"{binary} not found; install the apt package {package} (sudo apt-get install {package})")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition()`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (EC P-256)."""
    openssl = require("openssl", "openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        proc = subprocess.run([openssl, *args], cwd=folder, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"openssl {' '.join(args)} failed: {proc.stderr}"

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=edged test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, cn, ext in (
        ("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "edged-client", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + ext)
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return Certs(folder / "ca.crt", folder / "server.crt", folder / "server.key",
                 folder / "client.crt", folder / "client.key")


class Mosquitto:
    """A mosquitto process on 127.0.0.1:``port`` (and ``tls_port`` when ``tls``).

    ``users``: {name: password} -> a password file and no anonymous logins. ``persistence``:
    sessions and queued messages survive ``restart()`` (saved on SIGTERM). ``acl``: the text
    of an acl_file.
    """

    def __init__(self, folder: Path, users: dict[str, str] | None = None, tls: bool = False,
                 persistence: bool = True, acl: str | None = None):
        self.binary = require("mosquitto", "mosquitto")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.certs = make_certs(self.folder / "certs") if tls else None
        self.log_path = self.folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1"]
        if self.certs is not None:
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.certs.ca}",
                      f"certfile {self.certs.server_cert}", f"keyfile {self.certs.server_key}",
                      "require_certificate true"]
        if users:
            passwd = require("mosquitto_passwd", "mosquitto")
            path = self.folder / "passwd"
            for i, (name, password) in enumerate(users.items()):
                flags = ["-c"] if i == 0 else []
                subprocess.run([passwd, "-b", *flags, str(path), name, password], check=True,
                               capture_output=True, timeout=30)
            path.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {path}"]
        else:
            lines += ["allow_anonymous true"]
        if acl is not None:  # mosquitto acl_file text, e.g. "topic read #"
            (self.folder / "acl").write_text(acl)
            lines.append(f"acl_file {self.folder / 'acl'}")
        if persistence:
            (self.folder / "db").mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.folder / 'db'}/", "autosave_interval 0"]
        lines += ["max_queued_messages 100000", f"log_dest file {self.log_path}", "log_type all",
                  "connection_messages true"]
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto otherwise drops to user "mosquitto", which cannot read tmp
        self.config_path = self.folder / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> Mosquitto:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        while not all(_accepts(p) for p in ports):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise AssertionError(f"mosquitto exited at start: {err.strip()} {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mosquitto did not listen on {ports} within {timeout:g} s: {self.log_tail()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case it was paused
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def allow(self, acl: str) -> None:
        """Replace the acl_file text and make the running broker re-read it (SIGHUP)."""
        (self.folder / "acl").write_text(acl)
        assert self.proc is not None
        mark = self.log_tail(10**7).count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.log_tail(10**7).count("Reloading config") > mark, 20, what="mosquitto reload")

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged (a hung broker)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class V311OnlyProxy:
    """Listens on 127.0.0.1:``port``; a CONNECT with protocol level 5 gets the CONNACK of an
    MQTT 3.1.1-only broker (return code 1, unacceptable protocol version) and the connection is
    closed; any other connection is piped to ``target_port``. ``refused_v5`` counts refusals."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.refused_v5 = 0
        self.forwarded = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        try:
            first = _read_packet(conn)
            if first is None:
                conn.close()
                return
            header_len, packet = first
            body = packet[header_len:]
            # CONNECT variable header: protocol name (2-byte length + "MQTT"), then the level
            level = body[2 + int.from_bytes(body[:2], "big")]
            if packet[0] >> 4 == 1 and level == 5:
                self.refused_v5 += 1
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
            upstream.sendall(packet)
            self.forwarded += 1
            threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
            _pipe(conn, upstream)
        except (OSError, IndexError):
            conn.close()


def _read_packet(conn: socket.socket) -> tuple[int, bytes] | None:
    """One MQTT packet: (fixed header length, whole packet bytes)."""
    data = b""
    while len(data) < 2:
        chunk = conn.recv(1)
        if not chunk:
            return None
        data += chunk
    length, multiplier, pos = 0, 1, 1
    while True:
        if pos >= len(data):
            chunk = conn.recv(1)
            if not chunk:
                return None
            data += chunk
        byte = data[pos]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        pos += 1
        if not byte & 0x80:
            break
    while len(data) < pos + length:
        chunk = conn.recv(pos + length - len(data))
        if not chunk:
            return None
        data += chunk
    return pos, data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
