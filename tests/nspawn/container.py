"""Boot a real systemd in systemd-nspawn on a throw-away overlay of this machine's root.

Why an overlay of the host: nspawn needs an OS tree with systemd in it, and the package that
provides systemd-nspawn (systemd-container) depends on systemd, so the host always has one. An
overlayfs with ``/`` as the read-only lower layer and a tmpfs as the upper layer boots in about a
second, needs no download and no cache, and everything the container writes (apt, pip, users,
units) vanishes at poweroff. (A debootstrap'd Debian would need minutes of downloads per fresh CI
machine.) systemd-nspawn refuses ``--directory=/`` even with ``--volatile=overlay``; mounting the
overlay ourselves avoids that check.

The host's enabled services and timers (postgresql, mosquitto, apt-daily, ...) are masked in the
container, so it runs only systemd, journald, logind, dbus and what a test installs. The network
is shared with the host: a broker on the host's 127.0.0.1 is reachable, and so are the package
registries. Commands run inside through ``nsenter`` into the container's namespaces (no
systemd-machined is needed on the host, which may not run systemd at all).

    with Container(repo=REPO) as c:          # boots; the repo is bind-mounted read-only at /src/edged
        c.run("systemctl", "is-system-running")
        c.path("/etc/edged/config.yaml")      # the host path of a file inside
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

BASE = Path(os.environ.get("EDGED_NSPAWN_DIR", "/var/tmp/edged-nspawn"))
REPO_INSIDE = "/src/edged"
UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path")
ENV_PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class ContainerError(RuntimeError):
    """The container could not be prepared, booted or driven; the message says why."""


def requirements() -> list[str]:
    """What this machine lacks for booting a container (empty: all there)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("booting a systemd-nspawn container needs root")
    if not shutil.which("systemd-nspawn"):
        problems.append("systemd-nspawn not found; install the apt package systemd-container")
    if not any(Path(p).is_file() for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd")):
        problems.append("/usr/lib/systemd/systemd not found; install the apt package systemd")
    if not shutil.which("nsenter"):
        problems.append("nsenter not found; install the apt package util-linux")
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            problems.append("the kernel has no overlayfs (modprobe overlay)")
    except OSError as exc:
        problems.append(f"cannot read /proc/filesystems: {exc}")
    return problems


def _mounted(path: Path) -> bool:
    target = str(path)
    try:
        return any(line.split()[4] == target for line in Path("/proc/self/mountinfo").read_text().splitlines())
    except OSError:
        return False


def _umount(path: Path) -> None:
    if _mounted(path):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def cleanup_stale(base: Path = BASE) -> None:
    """Unmount and remove container folders whose nspawn process is gone (a killed test run)."""
    if not base.is_dir():
        return
    for folder in base.iterdir():
        pid_file = folder / "nspawn.pid"
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid):
            continue
        _umount(folder / "root")
        _umount(folder / "layers")
        if not _mounted(folder / "root") and not _mounted(folder / "layers"):
            shutil.rmtree(folder, ignore_errors=True)


class Container:
    """One booted container; ``start()``/``stop()`` or use it as a context manager."""

    def __init__(self, repo: Path | None = None, name: str | None = None, boot_timeout: float = 120.0,
                 base: Path = BASE):
        self.repo = Path(repo).resolve() if repo is not None else None
        self.name = name or f"edged-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.boot_timeout = boot_timeout
        self.folder = base / self.name
        self.root = self.folder / "root"
        self.log_path = self.folder / "nspawn.log"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.boot_seconds: float | None = None
        self.masked: list[str] = []

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Container:
        problems = requirements()
        if problems:
            raise ContainerError("; ".join(problems))
        cleanup_stale(self.folder.parent)
        started = time.monotonic()
        try:
            self._mount()
            self._prepare()
            self._spawn()
            self._wait_booted()
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def _mount(self) -> None:
        layers = self.folder / "layers"
        layers.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        _check(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(layers)], "mount the tmpfs for the overlay")
        (layers / "upper").mkdir()
        (layers / "work").mkdir()
        _check(["mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir=/,upperdir={layers / 'upper'},workdir={layers / 'work'}", str(self.root)],
               "mount the overlay of / (kernel overlayfs)")

    def _prepare(self) -> None:
        # a machine id of its own (journald refuses to share the host's)
        (self.root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        # only systemd itself: mask what the host enabled
        system = self.root / "etc/systemd/system"
        names = {p.name for wants in Path("/etc/systemd/system").glob("*.wants") for p in wants.iterdir()}
        names |= {"console-getty.service", "getty@.service", "systemd-networkd-wait-online.service"}
        for name in sorted(n for n in names if n.endswith(UNIT_SUFFIXES)):
            link = system / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")
            self.masked.append(name)
        if self.repo is not None:
            (self.root / REPO_INSIDE.lstrip("/")).mkdir(parents=True, exist_ok=True)

    def _spawn(self) -> None:
        cmd = ["systemd-nspawn", "--quiet", f"--directory={self.root}", f"--machine={self.name}", "--boot",
               "--register=no", "--link-journal=no", "--console=pipe"]
        if not Path("/run/systemd/system").is_dir():
            # the host does not run systemd: stay in our own cgroup instead of asking it for a scope
            cmd.append("--keep-unit")
        if self.repo is not None:
            cmd.append(f"--bind-ro={self.repo}:{REPO_INSIDE}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        (self.folder / "nspawn.pid").write_text(str(self.proc.pid))

    def _find_leader(self) -> int | None:
        """The container's PID 1 as seen from here: a child of nspawn that is PID 1 in its namespace."""
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("PPid", "").strip() == str(self.proc.pid) and fields.get("NSpid", "").split()[-1:] == ["1"]:
                return int(entry.name)
        return None

    def _wait_booted(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with status {self.proc.returncode} while booting: "
                                     f"{self.log_tail()}")
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                proc = self.run("systemctl", "is-system-running", check=False, timeout=30)
                state = proc.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise ContainerError(f"the container did not finish booting within {self.boot_timeout:g} s "
                             f"(system state {state or 'unknown'}): {self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Orderly shutdown (nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd),
        SIGKILL after ``timeout``; then unmount and remove everything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None
        self.leader = None
        _umount(self.root)
        _umount(self.folder / "layers")
        if not _mounted(self.root) and not _mounted(self.folder / "layers"):
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- driving it ---------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 600.0, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the container as root (a clean environment plus ``env``);
        ``check``: raise ContainerError with the output tail on a non-zero exit."""
        if self.leader is None:
            raise ContainerError("the container is not running")
        environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                       "LANG": "C.UTF-8", "TERM": "dumb", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        environment.update({k: v for k, v in os.environ.items() if k in ENV_PASSTHROUGH or k.startswith("PIP_")})
        environment.update(env or {})
        full = ["nsenter", f"--target={self.leader}", "--all", "--", "env", "-i",
                *(f"{k}={v}" for k, v in environment.items()), *cmd]
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as exc:
            raise ContainerError(f"{' '.join(cmd)} timed out after {timeout:g} s inside {self.name}") from exc
        if check and proc.returncode != 0:
            raise ContainerError(f"{' '.join(cmd)} exited with {proc.returncode} inside {self.name}: "
                                 f"{(proc.stdout + proc.stderr)[-3000:]}")
        return proc

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        """Run a bash script inside."""
        return self.run("bash", "-c", script, **kwargs)

    def path(self, inside: str | Path) -> Path:
        """The host path of ``inside`` (the overlay's merged view; read and write it directly)."""
        return self.root / str(inside).lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, lines: int = 60) -> str:
        cmd = ["journalctl", "--no-pager", "-n", str(lines), "-b"] + (["-u", unit] if unit else [])
        proc = self.run(*cmd, check=False, timeout=60)
        return proc.stdout + proc.stderr

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _check(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ContainerError(f"cannot {what}: {' '.join(cmd)}: {proc.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    """``boot.sh [--repo DIR] [--shell] [-- CMD ...]``: boot, run CMD (or an interactive shell), power off."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="boot.sh", description=main.__doc__)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2],
                        help=f"checkout bind-mounted read-only at {REPO_INSIDE} (default: this one)")
    parser.add_argument("--shell", action="store_true", help="open an interactive shell inside after CMD")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run inside (after --)")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        with Container(repo=args.repo) as c:
            print(f"boot.sh: {c.name} booted in {c.boot_seconds:.1f} s (leader pid {c.leader}, root {c.root})",
                  file=sys.stderr)
            status = 0
            if cmd:
                full = ["nsenter", f"--target={c.leader}", "--all", "--", *cmd]
                status = subprocess.run(full).returncode
            if args.shell or not cmd:
                subprocess.run(["nsenter", f"--target={c.leader}", "--all", "--", "bash", "-l"])
            started = time.monotonic()
        print(f"boot.sh: powered off in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return status
    except ContainerError as exc:
        print(f"boot.sh: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
