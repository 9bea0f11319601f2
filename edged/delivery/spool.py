"""Durable on-disk spool of turn records: written and fsync'd before publish, removed only once
the broker acknowledged them (PUBACK for QoS 1).

Designed for an SD card: append-only files, few small writes, no rewrite in place.

Folder layout (``spool.path``)::

    seg-<first seq, 20 digits>.log   segment files: records appended in seq order
    acks.log                         ack log: one entry per acknowledged seq, appended; its
                                     compaction keeps the highest acknowledged seq
    seq                              next-seq floor: 20 digits and a newline, overwritten in place
    counters                         turns dropped so far (JSON, fixed size, overwritten in place)
    lock                             flock(2): one process per spool

Record (little-endian)::

    0   4  magic b"EDS1"
    4   4  n, payload length (at most MAX_RECORD)
    8   8  seq (uint64)
    16  4  CRC-32 of bytes 4..16 and the payload
    20  n  payload: the record as compact UTF-8 JSON (an object holding "seq")

Ack entry (12 bytes): seq (uint64) + CRC-32 of those 8 bytes.

Policy:
- ``append`` assigns the next seq, writes the record and fdatasyncs it (``fsync: true``) before
  it returns; only then may the record be published. A write or sync that fails (disk full,
  I/O error) is cut off again (ftruncate to the old size), so no partial record stays behind;
  the turn is counted in ``dropped_nospace`` and ``SpoolWriteError`` raised: the caller keeps
  running, and the next append tries again. Seqs strictly increase across restarts, crashes
  and SIGKILL and never repeat one that may have been published; gaps are possible (the seq of
  a dropped record, or of a torn record whose header survived, is not reused by that process).
- Seq floor: at open the next seq is one above the highest of the ``seq`` file, every record
  and every ack entry, so a lost, damaged or lowered ``seq`` file never makes seqs repeat.
  Seqs stay below ``MAX_SEQ`` (2^53, the largest integer every JSON consumer reads exactly):
  a larger value on disk is ignored with a warning; ``append`` refuses to pass it.
- ``ack`` appends an ack entry and fdatasyncs it. Acks may come in any order; an ack of an
  unknown seq (dropped, already acked) is ignored. A crash before the ack is durable means
  the record is sent again: delivery is at-least-once, consumers deduplicate by ``seq``. An
  ack that cannot be written (disk full) still counts in memory and is written with the next
  one, so delivery keeps draining the spool, and deleting acknowledged segments frees space.
- Each process opening the spool appends to a new segment; a segment rolls over at
  ``max_bytes / 8`` (at least 1 KiB). A segment whose records are all acknowledged is deleted
  (the seq floor is written first, so seqs stay monotonic when every segment is gone), and
  the ack log is rewritten (temp file, fsync, rename) without the entries of deleted
  segments once it holds over 1024 entries and twice the live ones, and at every open.
- Full: when the segment files exceed ``max_bytes``, the oldest segment (about 1/8 of the
  bound) is deleted whole and its unacknowledged records are counted in ``dropped`` and
  logged as a warning: the newest turns win and the card never fills. The segment being
  appended to is never dropped. (acks.log and seq are small and not counted.) ``dropped_full``
  and ``dropped_nospace`` are kept in ``counters`` across restarts.
- The ``seq`` and ``counters`` files are rewritten in place (same size, one write, fsync), which
  needs no free space; a missing or resized one is written to a temporary file, fsync'd and
  renamed. A segment is deleted only once the floor above its seqs is durable.
- Recovery at open: every record is checked (magic, length, CRC, increasing seq). A corrupt
  record (torn write after a crash, flipped bits) is skipped with a warning and counted in
  ``skipped_corrupt``; reading resumes at the next valid record, never fatal. A record that
  no longer reads back later is skipped the same way. Corrupt ack entries are skipped too
  (their record is sent again); a torn ack-log tail is cut off.
- Moving (a SIGHUP reload that changes ``spool.path``): the new folder is opened with
  ``require_room`` (the files made at open must be written, else ``SpoolRoomError``) and
  ``take_over`` raises its seq floor above the old spool's and copies the old spool's
  unacknowledged records into it with their seqs, fsync'd; a failure removes what it wrote and
  the reload is refused. ``finish_take_over`` (the old publisher stopped) releases here what
  the old spool delivered meanwhile and there what it handed over, then closes it. The same
  folder with new limits is reconfigured in place, without reopening.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import logging
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from edged.config import SpoolConfig
from edged.errors import ConfigError, EdgedError

log = logging.getLogger(__name__)

MAGIC = b"EDS1"
HEADER = struct.Struct("<4sIQI")  # magic, payload length, seq, crc32
ACK = struct.Struct("<QI")  # seq, crc32(seq)
MAX_RECORD = 256 * 1024
MIN_SEGMENT = 1024
MAX_SEQ = 2**53  # the largest seq: JSON consumers (JavaScript, float parsers) read it exactly
COUNTERS_SIZE = 256
_SEGMENT_NAME = re.compile(r"^seg-(\d{20})\.log$")
_FSYNC = getattr(os, "fdatasync", os.fsync)
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_NO_ROOM_FIX = "the disk is full: free space on it or set spool.path to a folder with room"


class SpoolError(EdgedError):
    """The spool folder cannot be used (permissions, in use, disk error) or a record is unusable."""


class SpoolFolderError(SpoolError, ConfigError):
    """The spool folder cannot be created, locked or read (path, permissions): a configuration matter."""


class SpoolWriteError(SpoolError):
    """One turn could not be written (disk full, I/O error); it is counted as dropped, the spool stays usable."""


class SpoolRoomError(SpoolError):
    """A folder to move the spool to has no room for what must be written first (disk full)."""


@dataclass
class _Segment:
    first: int  # seq in the file name
    path: Path
    size: int = 0
    seqs: list[int] = field(default_factory=list)  # valid records, ascending
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (offset, length), seq order
    fd: int | None = None  # read descriptor, opened on demand


def _unwritable(path: Path, exc: OSError) -> SpoolError:
    """The one-line error for a folder that cannot take what must be written before it is used."""
    if exc.errno in _NO_ROOM:
        return SpoolRoomError(f"spool folder {path} has no room ({exc.strerror}); {_NO_ROOM_FIX}")
    return SpoolError(f"cannot write to spool folder {path} ({exc.strerror or exc}); check the card or set "
                      "spool.path to another folder")


def _crc(header_tail: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(header_tail)) & 0xFFFFFFFF


def encode_record(seq: int, payload: bytes) -> bytes:
    """One record: header + payload (see the module docstring)."""
    tail = struct.pack("<IQ", len(payload), seq)
    return HEADER.pack(MAGIC, len(payload), seq, _crc(tail, payload)) + payload


def _encode_ack(seq: int) -> bytes:
    raw = struct.pack("<Q", seq)
    return ACK.pack(seq, zlib.crc32(raw) & 0xFFFFFFFF)


def _valid_at(data: bytes, pos: int) -> tuple[int, int] | None:
    """``(seq, record length)`` when a valid record starts at ``pos``."""
    if len(data) - pos < HEADER.size or data[pos:pos + 4] != MAGIC:
        return None
    _, n, seq, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + n
    if n > MAX_RECORD or end > len(data):
        return None
    if _crc(data[pos + 4:pos + 16], data[pos + HEADER.size:end]) != crc:
        return None
    return seq, HEADER.size + n


def scan_records(data: bytes) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Valid records ``(seq, offset, length)`` and corrupt regions ``(offset, length)``.

    After a corrupt byte range, scanning resumes at the next offset where a valid record starts."""
    records: list[tuple[int, int, int]] = []
    corrupt: list[tuple[int, int]] = []
    pos = 0
    while pos < len(data):
        found = _valid_at(data, pos)
        if found is not None:
            records.append((found[0], pos, found[1]))
            pos += found[1]
            continue
        start = pos
        pos = data.find(MAGIC, pos + 1)
        while pos != -1 and _valid_at(data, pos) is None:
            pos = data.find(MAGIC, pos + 1)
        if pos == -1:
            pos = len(data)
        corrupt.append((start, pos - start))
    return records, corrupt


class Spool:
    """Append-only, fsync'd, bounded store of records until the broker acknowledges them.

    Thread-safe. ``depth``: unacknowledged records; ``dropped_full``: records dropped by the
    ``max_bytes`` policy, ``dropped_nospace``: turns that could not be written, both since the
    spool folder was made (persisted); ``acked``: acknowledgements this process applied;
    ``skipped_corrupt``: corrupt records/regions skipped at open (and at read); ``write_error``:
    why the last append failed, None once one succeeded again.
    """

    def __init__(self, config: SpoolConfig, require_room: bool = False):
        """``require_room``: the files written at open (seq floor, counters, ack log) must be
        written, else SpoolRoomError (or SpoolError), where a spool in use only warns."""
        self.config = config
        self._require_room = require_room
        self.path = Path(config.path)
        self.segment_bytes = max(config.max_bytes // 8, MIN_SEGMENT)
        self.depth = 0
        self.dropped_full = 0
        self.dropped_nospace = 0
        self.acked = 0
        self.skipped_corrupt = 0
        self.write_error: str | None = None
        self._unsynced_acks: list[int] = []  # applied in memory, not yet in acks.log (disk full)
        self._acks_warned = False
        self._counters_warned = False
        self._taken: tuple[list[int], list[int]] = ([], [])  # take_over: segments written, seqs copied
        self._highest_acked = 0
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._firsts: list[int] = []  # sorted segment first seqs
        self._active: _Segment | None = None
        self._active_fd: int | None = None
        self._ack_fd: int | None = None
        self._ack_entries = 0
        self._live_records = 0
        self._next_seq = 1
        self._lock_fd: int | None = None
        self._closed = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            self._recover()
        except OSError as exc:
            self._release()
            fix = _NO_ROOM_FIX if exc.errno in _NO_ROOM else "fix spool.path or its permissions"
            raise SpoolFolderError(f"spool folder {self.path} is not usable ({exc.strerror or exc}); {fix}") from None
        except SpoolError:
            self._release()
            raise

    # --- public API -----------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The seq the next ``append`` will assign."""
        return self._next_seq

    @property
    def dropped(self) -> int:
        """Turns lost by the spool: ``dropped_full + dropped_nospace`` (persisted)."""
        return self.dropped_full + self.dropped_nospace

    @property
    def disk_bytes(self) -> int:
        """Total size of the segment files."""
        return sum(s.size for s in self._segments.values())

    def append(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Assign the next seq, write the record durably; returns ``{"seq": seq, **payload}``."""
        with self._lock:
            self._check_open()
            seq = self._next_seq
            record = {"seq": seq, **{k: v for k, v in payload.items() if k != "seq"}}
            try:
                data = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise SpoolError(f"turn payload cannot be written as JSON ({exc}); pass only finite numbers, "
                                 "strings, lists and dicts") from None
            if len(data) > MAX_RECORD:
                raise SpoolError(f"turn payload is {len(data)} bytes, over the {MAX_RECORD}-byte record limit; "
                                 "send a smaller payload")
            if seq > MAX_SEQ:
                raise SpoolError(f"spool {self.path}: seq {seq} would pass 2^53, the largest integer JSON "
                                 "consumers read exactly; move the spool folder aside to start again from 1")
            blob = encode_record(seq, data)
            try:
                segment = self._writable_segment(seq)
                self._write_record(segment, blob)
            except OSError as exc:
                self._next_seq = seq + 1
                self._count_nospace(seq, exc)
                raise SpoolWriteError(self.write_error) from None
            if self.write_error is not None:
                log.warning("spool %s is writable again; %d turn(s) could not be written so far (dropped)",
                            self.path, self.dropped_nospace)
                self.write_error = None
            self._next_seq = seq + 1
            segment.pending[seq] = (segment.size, len(blob))
            segment.seqs.append(seq)
            segment.size += len(blob)
            self.depth += 1
            self._live_records += 1
            self._enforce_limit()
            return record

    def pending(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Unacknowledged records with seq > ``after``, in seq order (at most ``limit``)."""
        out: list[dict[str, Any]] = []
        with self._lock:
            self._check_open()
            for first in list(self._firsts):
                segment = self._segments.get(first)
                if segment is None or not segment.pending or segment.seqs[-1] <= after:
                    continue
                start = bisect.bisect_right(segment.seqs, after)
                for seq in segment.seqs[start:]:
                    if limit is not None and len(out) >= limit:
                        return out
                    where = segment.pending.get(seq)
                    if where is None:
                        continue
                    try:
                        record = self._read(segment, seq, *where)
                    except OSError as exc:
                        raise SpoolError(f"cannot read spool {segment.path} ({exc.strerror or exc}); "
                                         "check the card") from None
                    if record is not None:
                        out.append(record)
        return out

    def ack(self, seq: int) -> None:
        """Mark ``seq`` acknowledged, durably; unknown seqs are ignored."""
        with self._lock:
            self._check_open()
            self.acked += self._acknowledge([seq])

    def release(self, seqs: list[int]) -> None:
        """Mark records acknowledged on disk (one write) without counting them as delivered:
        turns another spool delivered or took over. Unknown seqs are ignored."""
        with self._lock:
            self._check_open()
            self._acknowledge(seqs)

    def reconfigure(self, config: SpoolConfig) -> None:
        """New limits (``max_bytes``, ``fsync``) for this same folder, applied in place."""
        with self._lock:
            self._check_open()
            self.config = config
            self.segment_bytes = max(config.max_bytes // 8, MIN_SEGMENT)
            self._enforce_limit()

    def take_over(self, other: Spool) -> int:
        """Prepare to replace ``other`` (a reload moving the spool): this folder's seq floor raised
        to ``other.next_seq`` and ``other``'s unacknowledged records copied here with their seqs,
        fsync'd, in new segments; the number copied. Until ``finish_take_over`` ``other`` stays in
        use, but nothing may be appended to it. SpoolRoomError (disk full) or SpoolError naming the fix when that cannot be done; what
        was written is removed again (the raised floor stays: a gap in seqs, no repeat)."""
        with self._lock:
            self._check_open()
            self._close_active()  # appends go to a new segment above the copied seqs
            top = max((segment.seqs[-1] for segment in self._segments.values() if segment.seqs), default=0)
            written: list[_Segment] = []
            copied: list[int] = []
            try:
                self._next_seq = max(self._next_seq, other.next_seq)
                self._write_floor()
                for blobs in other._pending_blobs():
                    # a record already waiting here (an earlier move back and forth) is not copied twice
                    fresh = [(seq, blob) for seq, blob in blobs if seq > top or not self._holds(seq, blob)]
                    copied += [seq for seq, _ in blobs]
                    if fresh and fresh[0][0] <= top:
                        raise SpoolError(f"spool folder {self.path} holds turns up to seq {top}, above the running "
                                         f"spool's seq {fresh[0][0]}; set spool.path to an empty folder")
                    self._write_copies(fresh, written)
                self._sync_dir()
            except OSError as exc:
                self._discard(written)
                raise _unwritable(self.path, exc) from None
            except SpoolError:
                self._discard(written)
                raise
            for segment in written:
                self._index(segment)
            self._taken = ([s.first for s in written], copied)
            return len(copied)

    def _holds(self, seq: int, blob: bytes) -> bool:
        """Whether record ``seq`` waits here with these very bytes (lock held)."""
        segment = self._segment_of(seq)
        where = segment.pending.get(seq) if segment is not None else None
        if where is None or where[1] != len(blob):
            return False
        if segment.fd is None:
            segment.fd = os.open(segment.path, os.O_RDONLY)
        return os.pread(segment.fd, where[1], where[0]) == blob

    def undo_take_over(self) -> None:
        """Remove the segments ``take_over`` wrote (the reload was refused after all)."""
        with self._lock:
            firsts, _ = self._taken
            self._taken = ([], [])
            segments = [self._segments[first] for first in firsts if first in self._segments]
            for segment in segments:
                self._unindex(segment)
            self._discard(segments)

    def finish_take_over(self, other: Spool) -> None:
        """Replace ``other``, whose publisher has stopped: the copied records it delivered since
        ``take_over`` are released here, the rest there (now held here); its deliveries count on
        in ``acked``; ``other`` is closed."""
        _, copied = self._taken
        self._taken = ([], [])
        try:
            with other._lock:
                # nothing is appended there any more: its last segment can go once released
                other._close_active()
                still = {seq for segment in other._segments.values() for seq in segment.pending}
            self.release([seq for seq in copied if seq not in still])
            other.release(copied)
            with self._lock:
                self.acked += other.acked
                self._enforce_limit()
        finally:
            other.close()

    def close(self) -> None:
        """Close files and release the folder lock (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._write_acks()
            for segment in self._segments.values():
                _close_fd(segment.fd)
                segment.fd = None
            self._close_active()
            _close_fd(self._ack_fd)
            self._ack_fd = None
            self._release()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- recovery -------------------------------------------------------------------------
    def _take_lock(self) -> None:
        self._lock_fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"spool folder {self.path} is in use by another edged process; "
                                 "stop it or set a different spool.path") from None
            raise

    def _release(self) -> None:
        _close_fd(self._lock_fd)
        self._lock_fd = None

    def _recover(self) -> None:
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink()
        floor = self._read_floor()
        acked = self._read_acks()
        self._read_counters()
        self._highest_acked = max(acked, default=0)
        highest = max(floor - 1, self._highest_acked)
        last_seq = 0
        names = sorted(p.name for p in self.path.iterdir() if _SEGMENT_NAME.match(p.name))
        for name in names:
            first = int(_SEGMENT_NAME.match(name).group(1))
            path = self.path / name
            data = path.read_bytes()
            records, corrupt = scan_records(data)
            segment = _Segment(first=first, path=path, size=len(data))
            for offset, length in corrupt:
                self._warn_corrupt(path, offset, length, "corrupt or torn record")
                # a torn record whose header survived: its seq was assigned, never reuse it
                if length >= HEADER.size and data[offset:offset + 4] == MAGIC:
                    seq = HEADER.unpack_from(data, offset)[2]
                    before = [s for s, o, _ in records if o < offset]
                    if seq == (before[-1] if before else last_seq) + 1:
                        highest = max(highest, seq)
            for seq, offset, length in records:
                if seq <= last_seq:
                    self._warn_corrupt(path, offset, length, f"record seq {seq} out of order")
                    continue
                if seq > MAX_SEQ:
                    self._warn_corrupt(path, offset, length, f"record seq {seq} beyond 2^53")
                    continue
                last_seq = seq
                segment.seqs.append(seq)
                if seq not in acked:
                    segment.pending[seq] = (offset, length)
            highest = max(highest, min(first, MAX_SEQ), last_seq)
            self._index(segment)
        self._next_seq = highest + 1
        try:  # repair a lost, damaged or lowered floor now, while there is room for a new file
            self._write_floor()
        except OSError as exc:
            if self._require_room:
                raise _unwritable(self.path, exc) from None
            log.warning("cannot write the seq floor of spool %s (%s); it is derived from the records",
                        self.path, exc.strerror or exc)
        if not (self.path / "counters").exists():
            self._write_counters(strict=self._require_room)
        done = [s for s in self._segments.values() if not s.pending]
        if done:
            self._delete_segments(done)
        self._compact_acks(strict=self._require_room)
        if self.depth:
            log.info("spool %s: %d unacknowledged record(s) to resend, next seq %d",
                     self.path, self.depth, self._next_seq)
        self._enforce_limit()

    def _warn_corrupt(self, path: Path, offset: int, length: int, what: str) -> None:
        self.skipped_corrupt += 1
        log.warning("spool %s: skipped %s at byte %d (%d bytes)", path, what, offset, length)

    def _read_floor(self) -> int:
        try:
            text = (self.path / "seq").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 1
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("spool %s: seq floor unreadable (%s); using the records' seqs", self.path, exc)
            return 1
        if not text.isdigit():
            log.warning("spool %s: seq floor file is corrupt (%r); using the records' seqs", self.path, text[:40])
            return 1
        if len(text) > 20 or int(text) > MAX_SEQ + 1:
            log.warning("spool %s: seq floor %s is beyond 2^53, the largest integer JSON consumers read exactly; "
                        "ignored, using the records' seqs", self.path, text[:24] + ("..." if len(text) > 24 else ""))
            return 1
        return int(text)

    def _read_counters(self) -> None:
        try:
            data = json.loads((self.path / "counters").read_bytes())
            full, nospace = data["dropped_full"], data["dropped_nospace"]
            if not all(isinstance(v, int) and 0 <= v <= MAX_SEQ for v in (full, nospace)):
                raise ValueError("not counts")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("spool %s: counters file is unreadable (%s); dropped counts start again at 0", self.path, exc)
            return
        self.dropped_full, self.dropped_nospace = full, nospace

    def _read_acks(self) -> set[int]:
        try:
            data = (self.path / "acks.log").read_bytes()
        except FileNotFoundError:
            return set()
        acked: set[int] = set()
        whole = len(data) - len(data) % ACK.size
        if whole != len(data):
            log.warning("spool %s: cut a torn ack entry (%d bytes) off acks.log", self.path, len(data) - whole)
        bad = 0
        for pos in range(0, whole, ACK.size):
            seq, crc = ACK.unpack_from(data, pos)
            if zlib.crc32(data[pos:pos + 8]) & 0xFFFFFFFF == crc and seq <= MAX_SEQ:
                acked.add(seq)
            else:
                bad += 1
        if bad:
            self.skipped_corrupt += bad
            log.warning("spool %s: skipped %d corrupt ack entr%s; those records will be sent again",
                        self.path, bad, "y" if bad == 1 else "ies")
        return acked

    # --- writing --------------------------------------------------------------------------
    def _write_record(self, segment: _Segment, blob: bytes) -> None:
        """Append and sync one record; on failure cut the file back to its old size."""
        fd = self._active_fd
        try:
            _write_all(fd, blob)
            if self.config.fsync:
                _FSYNC(fd)
        except OSError:
            try:
                os.ftruncate(fd, segment.size)  # type: ignore[arg-type]
                if self.config.fsync:
                    _FSYNC(fd)  # type: ignore[arg-type]
            except (OSError, TypeError):
                # the tail may hold a partial record (skipped by its CRC at open): never append after it
                if fd is not None:
                    try:
                        segment.size = os.fstat(fd).st_size
                    except OSError:
                        pass
                self._close_active()
            raise

    def _count_nospace(self, seq: int, exc: OSError) -> None:
        self.dropped_nospace += 1
        first = self.write_error is None
        self.write_error = (f"cannot write to spool {self.path} ({exc.strerror or exc}); turns are dropped until "
                            "there is room: free space on the card or move spool.path")
        if first:
            log.warning("%s (turn seq %d dropped)", self.write_error, seq)
        else:
            log.debug("spool still not writable: turn seq %d dropped", seq)
        self._write_counters()

    def _acknowledge(self, seqs: list[int]) -> int:
        """Apply acks (lock held) and write them in one go; how many were pending."""
        done: dict[int, _Segment] = {}
        applied = 0
        for seq in seqs:
            segment = self._segment_of(seq)
            if segment is None or seq not in segment.pending:
                continue
            del segment.pending[seq]
            self.depth -= 1
            applied += 1
            self._highest_acked = max(self._highest_acked, seq)
            self._unsynced_acks.append(seq)
            if not segment.pending and segment is not self._active:
                done[segment.first] = segment
        self._write_acks()
        if done:
            self._delete_segments(list(done.values()))
        self._maybe_compact_acks()
        return applied

    def _write_acks(self) -> None:
        """Append the acks applied in memory to acks.log; on failure keep them for the next try."""
        if not self._unsynced_acks or self._ack_fd is None:
            return
        live = self._unsynced_acks
        size = os.fstat(self._ack_fd).st_size
        try:
            _write_all(self._ack_fd, b"".join(_encode_ack(seq) for seq in live))
            if self.config.fsync:
                _FSYNC(self._ack_fd)
        except OSError as exc:
            try:  # a partial entry would shift every later one: cut it off
                os.ftruncate(self._ack_fd, size)
            except OSError:
                pass
            if not self._acks_warned:
                self._acks_warned = True
                log.warning("cannot write to spool %s (%s); acknowledgements are kept in memory until there is "
                            "room (a restart before then sends those turns again)",
                            self.path / "acks.log", exc.strerror or exc)
            self._unsynced_acks = live
            return
        self._ack_entries += len(live)
        self._unsynced_acks = []
        self._acks_warned = False

    def _writable_segment(self, seq: int) -> _Segment:
        segment = self._active
        if segment is not None and segment.size >= self.segment_bytes:
            self._close_active()
            if not segment.pending:
                self._delete_segments([segment])
            segment = None
        if segment is None:
            path = self.path / f"seg-{seq:020d}.log"
            self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            size = os.fstat(self._active_fd).st_size
            segment = _Segment(first=seq, path=path, size=size)
            self._index(segment)
            self._active = segment
            self._sync_dir()
        return segment

    def _write_copies(self, records: list[tuple[int, bytes]], written: list[_Segment]) -> None:
        """Write copied records in new segments of at most ``segment_bytes``, each synced; the
        segments go to ``written`` as soon as their file exists (for ``_discard``)."""
        while records:
            size, n = 0, 0
            while n < len(records) and (n == 0 or size + len(records[n][1]) <= self.segment_bytes):
                size += len(records[n][1])
                n += 1
            group, records = records[:n], records[n:]
            path = self.path / f"seg-{group[0][0]:020d}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            segment = _Segment(first=group[0][0], path=path)
            written.append(segment)
            try:
                _write_all(fd, b"".join(blob for _, blob in group))
                if self.config.fsync:
                    _FSYNC(fd)
            finally:
                os.close(fd)
            for seq, blob in group:
                segment.pending[seq] = (segment.size, len(blob))
                segment.seqs.append(seq)
                segment.size += len(blob)

    def _discard(self, segments: list[_Segment]) -> None:
        """Delete segment files outright, acknowledging nothing (undoing a copy)."""
        for segment in segments:
            try:
                _unlink_segment(segment)
            except OSError as exc:
                log.warning("cannot remove %s (%s); remove it by hand", segment.path, exc.strerror or exc)
        if segments:
            try:
                self._sync_dir()
            except OSError:
                pass

    def _index(self, segment: _Segment) -> None:
        """Count a segment in (lock held): its records and those still to send."""
        self._segments[segment.first] = segment
        bisect.insort(self._firsts, segment.first)
        self.depth += len(segment.pending)
        self._live_records += len(segment.seqs)

    def _unindex(self, segment: _Segment) -> None:
        """Count a segment out (lock held); its file is the caller's."""
        self.depth -= len(segment.pending)
        self._live_records -= len(segment.seqs)
        del self._segments[segment.first]
        self._firsts.remove(segment.first)

    def _close_active(self) -> None:
        _close_fd(self._active_fd)
        self._active_fd = None
        self._active = None

    def _enforce_limit(self) -> None:
        while self.disk_bytes > self.config.max_bytes and len(self._firsts) > 1:
            oldest = self._segments[self._firsts[0]]
            if oldest is self._active:
                break
            seqs = list(oldest.pending)
            if not self._delete_segments([oldest]):
                break
            if seqs:
                self.dropped_full += len(seqs)
                log.warning("spool %s full (max_bytes=%d): dropped %d unacknowledged record(s), seq %d..%d",
                            self.path, self.config.max_bytes, len(seqs), seqs[0], seqs[-1])
                self._write_counters()

    def _delete_segments(self, segments: list[_Segment]) -> bool:
        """Delete whole segments, the floor above their seqs made durable first; False if it cannot be."""
        try:
            self._write_floor()
        except OSError as exc:
            log.warning("cannot write the seq floor of spool %s (%s); keeping %d segment(s) until it can be",
                        self.path, exc.strerror or exc, len(segments))
            return False
        deleted = 0
        try:
            for segment in segments:
                _unlink_segment(segment)
                self._unindex(segment)
                deleted += 1
            self._sync_dir()
        except OSError as exc:  # EIO, a card gone read-only: the rest stays (a restart reads its acks)
            log.warning("cannot delete delivered segments of spool %s (%s); %d kept on disk",
                        self.path, exc.strerror or exc, len(segments) - deleted)
            return False
        return True

    def _write_floor(self) -> None:
        self._overwrite(self.path / "seq", f"{self._next_seq:020d}\n".encode())

    def _write_counters(self, strict: bool = False) -> None:
        """Write the dropped counts; a failure is warned about once (``strict``: raised)."""
        data = json.dumps({"dropped_full": self.dropped_full, "dropped_nospace": self.dropped_nospace}).encode()
        try:
            self._overwrite(self.path / "counters", data.ljust(COUNTERS_SIZE - 1) + b"\n")
        except OSError as exc:
            if strict:
                raise _unwritable(self.path, exc) from None
            if self._counters_warned:
                return
            self._counters_warned = True
            log.warning("cannot write spool %s (%s); the dropped counts are kept in memory",
                        self.path / "counters", exc.strerror or exc)

    def _overwrite(self, path: Path, data: bytes) -> None:
        """Replace a small file's contents: in place when the size matches (needs no free
        space; one write within one sector), else write, fsync, rename."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            self._atomic_write(path, data)
            return
        try:
            if os.fstat(fd).st_size != len(data):
                raise _Resize
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except _Resize:
            os.close(fd)
            fd = None
            self._atomic_write(path, data)
        finally:
            if fd is not None:
                os.close(fd)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            os.close(fd)
            try:  # no half-written temporary file left behind (a full disk)
                tmp.unlink()
            except OSError:
                pass
            raise
        os.close(fd)
        os.replace(tmp, path)
        self._sync_dir()

    def _maybe_compact_acks(self) -> None:
        live_acked = self._live_records - self.depth
        if self._ack_entries > 1024 and self._ack_entries > 2 * live_acked:
            self._compact_acks()

    def _compact_acks(self, strict: bool = False) -> None:
        """Rewrite acks.log with the acks of live segments, plus the highest acknowledged seq
        (a journal of the highest delivered seq for the floor); kept as it is when that fails
        (``strict``: the failure is raised)."""
        self._write_acks()
        entries = [seq for first in self._firsts for seq in self._segments[first].seqs
                   if seq not in self._segments[first].pending and seq not in self._unsynced_acks]
        if self._highest_acked and self._highest_acked not in entries and self._highest_acked not in self._unsynced_acks:
            entries.append(self._highest_acked)
        try:
            self._atomic_write(self.path / "acks.log", b"".join(_encode_ack(s) for s in entries))
        except OSError as exc:
            if strict:
                raise _unwritable(self.path, exc) from None
            log.warning("cannot compact spool %s (%s); appending to it as it is", self.path / "acks.log",
                        exc.strerror or exc)
            try:
                self._ack_entries = os.stat(self.path / "acks.log").st_size // ACK.size
            except FileNotFoundError:
                self._ack_entries = 0
        else:
            self._ack_entries = len(entries)
        if self._ack_fd is not None:
            _close_fd(self._ack_fd)
        self._ack_fd = os.open(self.path / "acks.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- reading --------------------------------------------------------------------------
    def _segment_of(self, seq: int) -> _Segment | None:
        i = bisect.bisect_right(self._firsts, seq) - 1
        return self._segments[self._firsts[i]] if i >= 0 else None

    def _pending_blobs(self) -> Iterator[list[tuple[int, bytes]]]:
        """The unacknowledged records as ``(seq, whole record bytes)``, one list per segment, in
        seq order; the lock is taken per segment. A record that no longer reads back is skipped."""
        with self._lock:
            self._check_open()
            firsts = list(self._firsts)
        for first in firsts:
            with self._lock:
                segment = self._segments.get(first)
                if segment is None:
                    continue
                blobs = []
                for seq, (offset, length) in list(segment.pending.items()):
                    try:
                        blob = self._read_blob(segment, seq, offset, length)
                    except OSError as exc:
                        raise SpoolError(f"cannot read spool {segment.path} ({exc.strerror or exc}); "
                                         "check the card") from None
                    if blob is not None:
                        blobs.append((seq, blob))
            if blobs:
                yield blobs

    def _read_blob(self, segment: _Segment, seq: int, offset: int, length: int) -> bytes | None:
        """The bytes of record ``seq``, checked; None (skipped with a warning) if they changed."""
        found = self._read_checked(segment, seq, offset, length)
        return None if found is None else found[0]

    def _read(self, segment: _Segment, seq: int, offset: int, length: int) -> dict[str, Any] | None:
        found = self._read_checked(segment, seq, offset, length)
        return None if found is None else found[1]

    def _read_checked(self, segment: _Segment, seq: int, offset: int,
                      length: int) -> tuple[bytes, dict[str, Any]] | None:
        if segment.fd is None:
            segment.fd = os.open(segment.path, os.O_RDONLY)
        blob = os.pread(segment.fd, length, offset)
        found = _valid_at(blob, 0) if len(blob) == length else None
        record = None
        if found is not None and found[0] == seq:
            try:
                record = json.loads(blob[HEADER.size:])
            except ValueError:
                record = None
        if not isinstance(record, dict):
            # the card changed the bytes after they were written: skip, like at recovery
            self._warn_corrupt(segment.path, offset, length, f"record seq {seq} that no longer reads back")
            del segment.pending[seq]
            self.depth -= 1
            return None
        return blob, record

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed; open a new Spool")


class _Resize(Exception):
    """The file to overwrite has another size: replace it instead."""


def _write_all(fd: int | None, data: bytes) -> None:
    if fd is None:
        raise OSError(errno.EBADF, "spool file is not open")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _unlink_segment(segment: _Segment) -> None:
    """Close a segment's file and delete it (already gone: fine; other OSError: raised)."""
    _close_fd(segment.fd)
    segment.fd = None
    try:
        segment.path.unlink()
    except FileNotFoundError:
        pass
