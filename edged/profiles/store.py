"""Voice profiles on disk: one JSON file per enrolled name, 0600, written atomically.

A profile holds the name, the unit embedding (the mean of the enrollment windows' embeddings)
and the sha256 of the embedding model that made it: a profile from another embedding model is
never used (its vectors live in another space), the message says to re-enroll. File names are
derived from a hash of the name, so no name can reach outside the folder. Profiles stay on the
device: only names are published.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edged.diarize.identify import check_name
from edged.errors import EdgedError

log = logging.getLogger(__name__)

FORMAT = "edged-voice-profile"
VERSION = 1
SUFFIX = ".profile.json"


class ProfileError(EdgedError):
    """A profile cannot be written, read or used (one-line message)."""


@dataclass(frozen=True)
class Profile:
    name: str
    vector: np.ndarray  # unit, (dim,)
    embedding_sha256: str
    speech_s: float
    created: float
    sources: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "name": self.name, "embedding_sha256": self.embedding_sha256,
                "dim": int(len(self.vector)), "speech_s": round(float(self.speech_s), 3),
                "created": round(float(self.created), 3), "sources": list(self.sources),
                "vector": [float(x) for x in self.vector]}

    @classmethod
    def from_dict(cls, data: Any) -> Profile:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        if data.get("version") != VERSION:
            raise ValueError(f"profile version {data.get('version')!r}, this edged reads {VERSION}")
        name = check_name(data.get("name"))
        vector = np.asarray(data.get("vector"), dtype=np.float64)
        if vector.ndim != 1 or len(vector) != data.get("dim") or not np.isfinite(vector).all() \
                or np.linalg.norm(vector) < 1e-6:
            raise ValueError("its vector is missing, of the wrong size or not finite")
        sha = data.get("embedding_sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            raise ValueError("embedding_sha256 is missing")
        return cls(name, vector / np.linalg.norm(vector), sha, float(data.get("speech_s", 0.0)),
                   float(data.get("created", 0.0)), tuple(str(s) for s in data.get("sources", ())))


def profile_path(folder: Path, name: str) -> Path:
    return Path(folder) / (hashlib.sha256(name.encode()).hexdigest()[:24] + SUFFIX)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ProfileStore:
    """The profiles folder. ``load`` skips (with one warning line each) corrupt files and
    profiles of another embedding model.

    A rename never leaves the voice under two names or none: it rewrites the old name's file in
    place with the new name and ``renamed_from`` (atomic_write), then moves it to the new name's
    path (os.replace, folder fsynced), so one file holds the voice at every instant, and every
    method first finishes such a move and deletes the temporary files a crash left (one log line).
    Writers and this tidying hold an exclusive flock on the folder, so it never meets a live write.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def _ensure(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ProfileError(f"cannot create the profiles folder {self.folder} ({exc.strerror}); "
                               "fix the path or its permissions") from None

    def _read(self, path: Path) -> tuple[Profile, str | None]:
        """The profile in ``path`` and the name it was renamed from (None: not renamed)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            profile = Profile.from_dict(data)
            return profile, None if data.get("renamed_from") is None else check_name(data["renamed_from"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError, EdgedError) as exc:
            raise ProfileError(f"profile {path} is corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                               "remove it and re-enroll") from None

    def _files(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*" + SUFFIX) if not p.name.startswith("."))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock, with what a crash left tidied (no folder: nothing to hold)."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:  # no folder, or none this user may open: nothing to lock or tidy (scan finds nothing)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._tidy()
            yield
        finally:
            os.close(fd)  # releases the lock

    def _tidy(self) -> None:
        """Finish a rename's move and delete temporary files, left by a crash (one log line)."""
        done = []
        try:
            for path in self.folder.glob(".tmp-*" + SUFFIX):
                path.unlink()
                done.append(f"removed the temporary file {path.name}")
            for path, profile, renamed_from in self._unfinished_renames():
                os.replace(path, profile_path(self.folder, profile.name))
                done.append(f"finished renaming {renamed_from!r} to {profile.name!r}")
            if done:
                _fsync_dir(self.folder)
        except OSError as exc:
            log.warning("cannot tidy the profiles folder %s after a crash (%s); fix its permissions",
                        self.folder, exc.strerror)
            return
        if done:
            log.info("profiles folder %s, after a crash: %s", self.folder, "; ".join(done))

    def _unfinished_renames(self) -> list[tuple[Path, Profile, str]]:
        """(path, profile, old name) of renamed profiles still at their old name's path (unreadable
        files are skipped: ``scan`` reports them)."""
        found = []
        for path in self._files():
            try:
                profile, renamed_from = self._read(path)
            except ProfileError:
                continue
            if self._moving(path, renamed_from):
                found.append((path, profile, renamed_from))
        return found

    def _moving(self, path: Path, renamed_from: str | None) -> bool:
        """Is ``path`` a renamed profile still at its old name's path (the rename's move not done)?"""
        return renamed_from is not None and path.name == profile_path(self.folder, renamed_from).name

    def scan(self) -> tuple[list[Profile], list[str]]:
        """Every readable profile (sorted by name) and one warning line per unreadable file."""
        with self._locked():
            return self._scan()

    def _scan(self) -> tuple[list[Profile], list[str]]:
        if not self.folder.is_dir():
            return [], []
        found, moving, warnings = {}, {}, []
        for path in self._files():
            try:
                profile, renamed_from = self._read(path)
            except ProfileError as exc:
                warnings.append(str(exc))
                continue
            if path.name == profile_path(self.folder, profile.name).name:
                found[profile.name] = profile
            elif self._moving(path, renamed_from):
                moving[profile.name] = profile  # renamed, its move not finished (tidying failed): the new name holds
            else:
                warnings.append(f"profile {path} names {profile.name!r} but is not that name's file; "
                                "remove it and re-enroll")
        return sorted({**found, **moving}.values(), key=lambda p: p.name), warnings

    def load(self, embedding_sha256: str, warn: bool = True) -> list[Profile]:
        """The profiles usable with this embedding model; skipped files are logged (one line each)."""
        profiles, warnings = self.scan()
        usable = []
        for p in profiles:
            if p.embedding_sha256 != embedding_sha256:
                warnings.append(f"profile {p.name!r} was made with another embedding model "
                                f"({p.embedding_sha256[:12]}, this bundle's is {embedding_sha256[:12]}); "
                                f"skipped: re-enroll it with edged enroll {p.name} AUDIO... --replace")
                continue
            usable.append(p)
        if warn:
            for line in warnings:
                log.warning("%s", line)
        return usable

    def get(self, name: str) -> Profile | None:
        path = profile_path(self.folder, check_name(name))
        with self._locked():
            return self._read(path)[0] if path.exists() else None

    def names(self) -> list[str]:
        return [p.name for p in self.scan()[0]]

    def save(self, profile: Profile, replace: bool = False) -> Path:
        """Write the profile; ProfileError when the name exists and ``replace`` is false."""
        check_name(profile.name)
        path = profile_path(self.folder, profile.name)
        self._ensure()
        with self._locked():
            self._check_free(profile.name, replace)
            try:
                atomic_write(path, (json.dumps(profile.to_dict(), ensure_ascii=False) + "\n").encode())
            except OSError as exc:
                raise _unwritable(path, exc) from None
        return path

    def _check_free(self, name: str, replace: bool) -> None:
        """ProfileError when ``name`` is enrolled (also as a rename whose move is not finished)."""
        if not replace and (profile_path(self.folder, name).exists()
                            or any(profile.name == name for _, profile, _ in self._unfinished_renames())):
            raise ProfileError(f"speaker {name!r} is already enrolled; add --replace to overwrite it, "
                               "or choose another name")

    def remove(self, name: str) -> None:
        path = profile_path(self.folder, check_name(name))
        with self._locked():
            if not path.exists():
                raise ProfileError(self._unknown(name))
            try:
                path.unlink()
                _fsync_dir(self.folder)
            except OSError as exc:
                raise _unwritable(path, exc) from None

    def rename(self, old: str, new: str, replace: bool = False) -> Profile:
        """Give ``old``'s voice the name ``new``, crash-safe (see the class)."""
        path = profile_path(self.folder, check_name(old))
        with self._locked():
            if not path.exists():
                raise ProfileError(self._unknown(old))
            profile = self._read(path)[0]
            check_name(new)
            if new == old:
                raise ProfileError(f"speaker {old!r} already has that name; give a different NEW name")
            self._check_free(new, replace)
            renamed = Profile(new, profile.vector, profile.embedding_sha256, profile.speech_s, time.time(),
                              profile.sources)
            data = {**renamed.to_dict(), "renamed_from": old}
            try:
                atomic_write(path, (json.dumps(data, ensure_ascii=False) + "\n").encode())  # the voice is now `new`
            except OSError as exc:
                raise _unwritable(path, exc) from None
            try:
                os.replace(path, profile_path(self.folder, new))
                _fsync_dir(self.folder)
            except OSError as exc:  # done all the same: loads read it as `new`, the next call moves it
                log.warning("profile %r renamed to %r, but its file stays at %s until the folder is writable (%s)",
                            old, new, path, exc.strerror or exc)
        return renamed

    def _unknown(self, name: str) -> str:
        known = [p.name for p in self._scan()[0]]
        return (f"no enrolled speaker {name!r} in {self.folder}; "
                + (f"enrolled: {', '.join(known)}" if known else "none enrolled yet (edged enroll NAME AUDIO...)"))


def _unwritable(path: Path, exc: OSError) -> ProfileError:
    return ProfileError(f"cannot write the profile {path} ({exc.strerror or exc}); "
                        "free space or fix the profiles folder's permissions, then try again")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
