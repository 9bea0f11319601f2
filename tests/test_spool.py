"""The on-disk spool: durability, seq monotonicity across SIGKILL, acks, corruption, full policy."""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edged.errors import ConfigError, EdgedError
from edged.settings import build
from edged.delivery.spool import (HEADER, MAGIC, MAX_SEQ, Spool, SpoolConfig, SpoolError, SpoolRoomError,
                                  SpoolWriteError, scan_records)

sys.path.insert(0, str(Path(__file__).parent))
from smallfs import fill, free, small_tmpfs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def turn(i: int) -> dict:
    return {"type": "turn", "speaker": f"speaker_{i % 3}", "start": float(i), "end": i + 0.5,
            "duration": 0.5, "confidence": 0.9, "stream_seq": i, "device_id": "dev"}


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def open_spool(path: Path, **kw) -> Spool:
    return Spool(SpoolConfig(path=path, **kw))


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.log"))


def test_append_assigns_seq_and_survives_reopen(spool_dir):
    with open_spool(spool_dir) as spool:
        records = [spool.append(turn(i)) for i in range(5)]
        assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
        assert records[0] == {"seq": 1, **turn(0)}
        assert spool.depth == 5
        spool.ack(3)
        spool.ack(1)  # out of order
        spool.ack(1)  # twice: ignored
        spool.ack(99)  # unknown: ignored
        assert [r["seq"] for r in spool.pending()] == [2, 4, 5]
        assert [r["seq"] for r in spool.pending(after=2, limit=1)] == [4]
    with open_spool(spool_dir) as spool:
        assert [r["seq"] for r in spool.pending()] == [2, 4, 5]
        assert spool.pending()[0] == {"seq": 2, **turn(1)}
        assert spool.depth == 3 and spool.skipped_corrupt == 0
        assert spool.append(turn(9))["seq"] == 6


def test_record_format_on_disk(spool_dir):
    """The documented layout: magic, length, seq, CRC, compact JSON holding the seq."""
    with open_spool(spool_dir) as spool:
        spool.append({"speaker": "speaker_0"})
    (seg,) = segments(spool_dir)
    assert seg.name == f"seg-{1:020d}.log"
    data = seg.read_bytes()
    magic, n, seq, _crc = HEADER.unpack_from(data, 0)
    assert (magic, seq, len(data)) == (MAGIC, 1, HEADER.size + n)
    assert json.loads(data[HEADER.size:]) == {"seq": 1, "speaker": "speaker_0"}


def test_fully_acked_segments_are_deleted_and_seq_stays_monotonic(spool_dir):
    with open_spool(spool_dir, max_bytes=64 * 1024) as spool:  # 8 KiB segments
        for i in range(200):
            spool.append(turn(i))
        assert len(segments(spool_dir)) > 3
        for r in spool.pending():
            spool.ack(r["seq"])
        assert spool.depth == 0
        assert len(segments(spool_dir)) == 1  # only the segment still open for appends
    with open_spool(spool_dir, max_bytes=64 * 1024) as spool:
        assert segments(spool_dir) == []  # compacted at open: every segment acknowledged
        assert (spool_dir / "acks.log").stat().st_size == 12  # only the highest acknowledged seq
        assert spool.append(turn(0))["seq"] == 201  # from the seq floor file


def test_ack_log_is_compacted(spool_dir):
    with open_spool(spool_dir, max_bytes=64 * 1024, fsync=False) as spool:  # 8 KiB segments
        for i in range(3000):
            spool.ack(spool.append({"i": i})["seq"])
            # entries of deleted segments are dropped once the log holds over 1024 and 2x the live ones
            assert (spool_dir / "acks.log").stat().st_size <= 1100 * 12
        assert spool.depth == 0 and len(segments(spool_dir)) == 1
    with open_spool(spool_dir) as spool:
        assert spool.depth == 0 and segments(spool_dir) == []
        assert (spool_dir / "acks.log").stat().st_size == 12
        assert spool.append({"i": 0})["seq"] == 3001


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edged.delivery.spool import Spool, SpoolConfig
    spool = Spool(SpoolConfig(path=Path(sys.argv[1]), max_bytes=1024 * 1024))
    i = 0
    while True:
        r = spool.append({"i": i, "speaker": "speaker_1"})
        print("appended", r["seq"], flush=True)
        if i % 3 == 0:
            spool.ack(r["seq"])
            print("acked", r["seq"], flush=True)
        i += 1
""")


def test_seq_monotonic_across_sigkill(spool_dir):
    """A writer is SIGKILLed mid-stream three times: every record whose append returned is
    still there unless its ack returned; seqs keep increasing."""
    seen_max = 0
    figures = []
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(spool_dir)], stdout=subprocess.PIPE,
                                text=True, cwd=REPO)
        appended: list[int] = []
        acked: set[int] = set()
        deadline = time.monotonic() + 60
        while len(appended) < 150 + 40 * round_:
            line = proc.stdout.readline()
            assert line, f"writer exited early with {proc.poll()}"
            kind, seq = line.split()
            (appended.append if kind == "appended" else acked.add)(int(seq))
            assert time.monotonic() < deadline, "writer too slow"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for line in proc.stdout.read().splitlines():  # lines written before the kill
            kind, seq = line.split()
            (appended.append if kind == "appended" else acked.add)(int(seq))
        proc.stdout.close()
        assert appended[0] > seen_max, "seq went backwards after a restart"
        assert appended == sorted(set(appended))
        with open_spool(spool_dir, max_bytes=1024 * 1024) as spool:
            pending = [r["seq"] for r in spool.pending()]
            assert pending == sorted(set(pending))
            # the last record may have been acked just before the kill, before "acked" was printed
            lost = set(appended) - acked - set(pending)
            assert lost <= {appended[-1]}, "a durable record was lost"
            assert all(appended.index(seq) % 3 == 0 for seq in lost), "a durable record was lost"
            assert not (acked & set(pending)), "a durable ack was lost"
            assert spool.next_seq > max(appended)
            assert spool.skipped_corrupt == 0 and spool.dropped == 0
            figures.append((len(appended), len(acked), len(pending)))
        seen_max = max(appended)
    print("sigkill rounds (appended, acked, pending after reopen):", figures)


def test_torn_tail_is_skipped_with_a_warning(spool_dir, caplog):
    with open_spool(spool_dir) as spool:
        for i in range(5):
            spool.append(turn(i))
    (seg,) = segments(spool_dir)
    size = seg.stat().st_size
    with open(seg, "r+b") as f:
        f.truncate(size - 7)  # the last record torn, as by a power cut mid-write
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
        spool = open_spool(spool_dir)
    with spool:
        assert [r["seq"] for r in spool.pending()] == [1, 2, 3, 4]
        assert spool.skipped_corrupt == 1
        assert "corrupt or torn record" in caplog.text
        assert spool.append(turn(5))["seq"] == 6  # the torn record's seq is not reused
    with open_spool(spool_dir) as spool:  # the torn bytes stay skipped, the new record reads
        assert [r["seq"] for r in spool.pending()] == [1, 2, 3, 4, 6]


def test_flipped_byte_skips_one_record_and_keeps_the_rest(spool_dir, caplog):
    with open_spool(spool_dir) as spool:
        for i in range(5):
            spool.append(turn(i))
    (seg,) = segments(spool_dir)
    data = bytearray(seg.read_bytes())
    records, _ = scan_records(bytes(data))
    _, offset, length = records[2]  # seq 3
    data[offset + HEADER.size + 5] ^= 0x40
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
        spool = open_spool(spool_dir)
    with spool:
        assert [r["seq"] for r in spool.pending()] == [1, 2, 4, 5]
        assert spool.skipped_corrupt == 1
        assert f"at byte {offset}" in caplog.text


def test_garbage_and_flipped_header_are_skipped(spool_dir):
    with open_spool(spool_dir) as spool:
        for i in range(4):
            spool.append(turn(i))
    (seg,) = segments(spool_dir)
    data = bytearray(seg.read_bytes())
    records, _ = scan_records(bytes(data))
    data[records[1][1]] ^= 0xFF  # magic of seq 2 destroyed
    seg.write_bytes(bytes(data) + b"\x00garbage" + MAGIC + b"\x05\x00")
    with open_spool(spool_dir) as spool:
        assert [r["seq"] for r in spool.pending()] == [1, 3, 4]
        assert spool.skipped_corrupt == 2


def test_corrupt_ack_entry_means_the_record_is_sent_again(spool_dir, caplog):
    with open_spool(spool_dir) as spool:
        for i in range(3):
            spool.append(turn(i))
        spool.ack(1)
        spool.ack(2)
    acks = spool_dir / "acks.log"
    data = bytearray(acks.read_bytes())
    assert len(data) == 24
    data[12] ^= 0x01  # the entry of seq 2
    acks.write_bytes(bytes(data) + b"\x07\x00")  # plus a torn entry
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
        spool = open_spool(spool_dir)
    with spool:
        assert [r["seq"] for r in spool.pending()] == [2, 3]
        assert spool.skipped_corrupt == 1
        assert "sent again" in caplog.text and "torn ack entry" in caplog.text
        spool.ack(2)
    with open_spool(spool_dir) as spool:
        assert [r["seq"] for r in spool.pending()] == [3]


def test_full_spool_drops_the_oldest_unacknowledged_records(spool_dir, caplog):
    max_bytes = 8 * 1024  # 1 KiB segments
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
        spool = open_spool(spool_dir, max_bytes=max_bytes)
        with spool:
            for i in range(300):
                spool.append(turn(i))
                assert spool.disk_bytes <= max_bytes
            seqs = [r["seq"] for r in spool.pending()]
            assert spool.dropped > 0 and spool.dropped + spool.depth == 300
            assert seqs == list(range(301 - len(seqs), 301))  # the newest kept, contiguous
            assert sum(p.stat().st_size for p in segments(spool_dir)) <= max_bytes
            dropped = spool.dropped
    assert "full (max_bytes=8192): dropped" in caplog.text
    print(f"spool full: 300 appended, {dropped} dropped, {len(seqs)} kept in {max_bytes} bytes")
    with open_spool(spool_dir, max_bytes=max_bytes) as spool:
        assert [r["seq"] for r in spool.pending()] == seqs
        assert spool.dropped == spool.dropped_full == dropped  # persisted across the restart
        spool.ack(seqs[-1])  # an ack of a dropped seq is ignored, the rest still pending
        spool.ack(1)
        assert spool.depth == len(seqs) - 1


def test_one_process_per_spool(spool_dir):
    spool = open_spool(spool_dir)
    with pytest.raises(SpoolError, match="in use by another edged process"):
        open_spool(spool_dir)
    spool.close()
    open_spool(spool_dir).close()


def test_unusable_folder_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError) as err:
        open_spool(blocker / "spool")
    assert "spool.path" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, EdgedError)


def test_bad_payload_and_closed_spool(spool_dir):
    spool = open_spool(spool_dir, fsync=False)
    with pytest.raises(SpoolError, match="JSON"):
        spool.append({"start": float("nan")})
    assert spool.append({"ok": 1})["seq"] == 1  # nothing consumed by the failed append
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append({"ok": 2})


def test_config_section():
    assert build(SpoolConfig, None, "spool") == SpoolConfig()
    assert SpoolConfig().max_bytes == 64 * 1024 * 1024 and SpoolConfig().fsync is True
    config = build(SpoolConfig, {"path": "/tmp/x", "max_bytes": 2 * 1024 * 1024, "fsync": False}, "spool")
    assert config == SpoolConfig(path=Path("/tmp/x"), max_bytes=2 * 1024 * 1024, fsync=False)
    with pytest.raises(ConfigError, match=r"spool.max_bytes=1000 is out of range"):
        build(SpoolConfig, {"max_bytes": 1000}, "spool")


def test_record_struct_is_little_endian():
    assert HEADER.size == 20 and HEADER.format == "<4sIQI"
    assert struct.calcsize("<QI") == 12


def delivered_all(spool: Spool, n: int) -> int:
    """Append and acknowledge ``n`` turns (every segment deleted once acknowledged); the last seq."""
    last = 0
    for i in range(n):
        last = spool.append(turn(i))["seq"]
        spool.ack(last)
    return last


@pytest.mark.parametrize("damage", ["deleted", "garbled", "lowered", "empty", "huge", "beyond 2^53"])
def test_seq_floor_lost_or_damaged_never_reuses_a_delivered_seq(spool_dir, caplog, damage):
    """Every record delivered, every segment gone: the floor file alone held the next seq, until
    acks.log started keeping the highest acknowledged seq."""
    with open_spool(spool_dir, max_bytes=64 * 1024) as spool:
        last = delivered_all(spool, 300)
    open_spool(spool_dir, max_bytes=64 * 1024).close()  # deletes the last, acknowledged segment
    floor = spool_dir / "seq"
    assert segments(spool_dir) == [] and floor.read_text() == f"{last + 1:020d}\n"
    {"deleted": floor.unlink, "garbled": lambda: floor.write_bytes(b"\x00\xffx12"),
     "lowered": lambda: floor.write_text("3\n"), "empty": lambda: floor.write_text(""),
     "huge": lambda: floor.write_text("9" * 70 + "\n"),
     "beyond 2^53": lambda: floor.write_text(f"{2**53 + 5}\n")}[damage]()
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
        with open_spool(spool_dir, max_bytes=64 * 1024) as spool:
            assert spool.append(turn(0))["seq"] == last + 1
    if damage in ("huge", "beyond 2^53"):
        assert "is beyond 2^53" in caplog.text
    assert int(floor.read_text()) > last  # repaired at open


def test_seq_floor_and_ack_log_both_lost_still_take_the_records(spool_dir):
    with open_spool(spool_dir) as spool:
        for i in range(5):
            spool.append(turn(i))
        spool.ack(5)
    (spool_dir / "seq").unlink()
    (spool_dir / "acks.log").unlink()
    with open_spool(spool_dir) as spool:
        assert spool.append(turn(9))["seq"] == 6


def test_records_beyond_2_53_are_skipped_not_a_crash(spool_dir, caplog):
    from edged.delivery.spool import encode_record

    spool_dir.mkdir()
    (spool_dir / "seg-00000000000000000001.log").write_bytes(
        encode_record(1, b'{"seq":1}') + encode_record(2**63, b'{"seq":0}'))
    with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
        with open_spool(spool_dir) as spool:
            assert [r["seq"] for r in spool.pending()] == [1]
            assert spool.append(turn(0))["seq"] == 2
    assert "beyond 2^53" in caplog.text and MAX_SEQ == 2**53


def test_disk_full_drops_new_turns_keeps_draining_and_resumes(tmp_path, caplog):
    """A real full filesystem: appends fail cleanly (counted, no partial record), acks of turns
    already spooled still apply and free space, and appends work again once there is room."""
    with small_tmpfs(tmp_path / "fs", "256k") as fs:
        folder = fs / "spool"
        caplog.set_level(logging.DEBUG, logger="edged.delivery.spool")
        spool = open_spool(folder, max_bytes=1024 * 1024)
        first = [spool.append(turn(i))["seq"] for i in range(20)]
        filler = fill(fs)
        failed = 0
        for i in range(50):
            try:
                spool.append(turn(i))
            except SpoolWriteError as exc:
                failed += 1
                assert "No space left on device" in str(exc) and "free space" in str(exc)
        assert failed > 0 and spool.dropped_nospace == failed
        assert spool.write_error is not None
        assert "turns are dropped until there is room" in caplog.text
        # the turns spooled before keep draining: acks apply although acks.log cannot grow
        kept = [r["seq"] for r in spool.pending()]
        assert kept[:20] == first and kept == sorted(kept)
        for seq in kept:
            spool.ack(seq)
        assert spool.depth == 0
        filler.unlink()  # room again: no restart needed
        after = spool.append(turn(99))
        assert spool.write_error is None and after["seq"] > kept[-1]
        assert "is writable again" in caplog.text
        spool.close()
        # nothing torn: every byte on disk is a whole record, the counts survived
        for path in segments(folder):
            records, corrupt = scan_records(path.read_bytes())
            assert corrupt == []
        with open_spool(folder, max_bytes=1024 * 1024) as again:
            assert [r["seq"] for r in again.pending()] == [after["seq"]]
            assert again.dropped_nospace == failed and again.skipped_corrupt == 0
            assert again.append(turn(0))["seq"] == after["seq"] + 1


def test_a_spool_opened_on_a_full_disk_still_works(tmp_path):
    with small_tmpfs(tmp_path / "fs", "256k") as fs:
        folder = fs / "spool"
        with open_spool(folder, max_bytes=1024 * 1024) as spool:
            for i in range(10):
                spool.append(turn(i))
        filler = fill(fs)
        with open_spool(folder, max_bytes=1024 * 1024) as spool:  # compaction cannot write: not fatal
            assert spool.depth == 10
            for r in spool.pending():
                spool.ack(r["seq"])
            written = []
            with pytest.raises(SpoolWriteError):  # the last page of the segment may hold a few more
                for i in range(100):
                    written.append(spool.append(turn(i))["seq"])
        filler.unlink()
        with open_spool(folder, max_bytes=1024 * 1024) as spool:
            assert [r["seq"] for r in spool.pending()] == written
            assert spool.dropped_nospace == 1
            # (a seq no consumer can have seen, such as the dropped turn's, may come again)
            assert spool.append(turn(0))["seq"] > (written or [10])[-1]


def test_moving_onto_a_full_disk_is_refused_and_undone_then_moves_every_waiting_turn(tmp_path, caplog):
    """A reload moving the spool to a folder on a real full filesystem: opening it for the move
    fails with one line naming the folder, the full disk and the fix; with room for its small
    files only, copying the waiting turns fails and is undone; with room they move with their
    seqs, new seqs go on above them, and each turn is held by one folder only."""
    with small_tmpfs(tmp_path / "fs", "256k") as fs:
        folder = fs / "spool"
        old = open_spool(tmp_path / "old")
        seqs = [old.append(turn(i))["seq"] for i in range(30)]
        old.ack(seqs[0])
        old.ack(seqs[1])
        waiting = seqs[2:]
        filler = fill(fs)
        with caplog.at_level(logging.WARNING, logger="edged.delivery.spool"):
            with pytest.raises(SpoolRoomError) as err:
                Spool(SpoolConfig(path=folder), require_room=True)
            assert str(err.value) == (f"spool folder {folder} has no room (No space left on device); the disk is "
                                      "full: free space on it or set spool.path to a folder with room")
            assert caplog.text == ""  # that line is all: the reload logs it
            free(filler, 2 * 4096)  # the full disk during the move: room for the floor and counters only
            new = Spool(SpoolConfig(path=folder), require_room=True)
            with pytest.raises(SpoolRoomError, match="has no room"):
                new.take_over(old)
            new.undo_take_over()
            new.close()
            assert caplog.text == ""
        assert segments(folder) == [] and sorted(p.name for p in folder.iterdir()) == ["acks.log", "counters",
                                                                                        "lock", "seq"]
        assert int((folder / "seq").read_text()) == old.next_seq  # raised: a later move repeats no seq
        assert [r["seq"] for r in old.pending()] == waiting  # the running spool untouched
        filler.unlink()
        new = Spool(SpoolConfig(path=folder), require_room=True)
        assert new.take_over(old) == len(waiting)
        assert new.pending() == old.pending()
        old.ack(waiting[0])  # the old publisher delivers one more before it stops
        new.finish_take_over(old)
        assert segments(tmp_path / "old") == []  # its last segment too: nothing there to send again
        assert [r["seq"] for r in new.pending()] == waiting[1:] and new.acked == 3
        assert new.append(turn(99))["seq"] == waiting[-1] + 1
        new.close()
        with open_spool(tmp_path / "old") as again:
            assert again.depth == 0  # handed over: never sent twice from two folders
        with open_spool(folder) as again:
            assert [r["seq"] for r in again.pending()] == [*waiting[1:], waiting[-1] + 1]
            assert again.skipped_corrupt == 0


def test_moving_to_a_folder_holding_higher_seqs_is_refused(tmp_path):
    with open_spool(tmp_path / "other") as other:
        for i in range(5):
            other.append(turn(i))
    with open_spool(tmp_path / "old") as old:
        old.append(turn(7))  # seq 1 too, another turn
        new = Spool(SpoolConfig(path=tmp_path / "other"), require_room=True)
        with pytest.raises(SpoolError, match="holds turns up to seq 5, above the running spool's seq 1; set "
                                             "spool.path to an empty folder"):
            new.take_over(old)
        new.close()
    with open_spool(tmp_path / "other") as other:
        assert [r["seq"] for r in other.pending()] == [1, 2, 3, 4, 5]


def test_moving_back_to_a_folder_still_holding_the_same_turns_copies_none_twice(tmp_path):
    """A move there and back whose release could not be written (full disk): the folder moved
    back to still holds those very records."""
    import shutil

    with open_spool(tmp_path / "a") as a:
        for i in range(3):
            a.append(turn(i))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with open_spool(tmp_path / "a") as a:
        a.append(turn(3))
        b = Spool(SpoolConfig(path=tmp_path / "b"), require_room=True)
        assert b.take_over(a) == 4
        b.finish_take_over(a)
    with b:
        assert [r["seq"] for r in b.pending()] == [1, 2, 3, 4] and b.pending()[3] == {"seq": 4, **turn(3)}


def test_new_limits_for_the_same_folder_apply_in_place(spool_dir):
    with open_spool(spool_dir, max_bytes=1024 * 1024) as spool:
        for i in range(3):
            spool.append(turn(i))
        spool.reconfigure(SpoolConfig(path=spool_dir, max_bytes=8 * 1024, fsync=False))
        assert spool.segment_bytes == 1024 and spool.config.fsync is False
        for i in range(300):
            spool.append(turn(i))
        assert spool.disk_bytes <= 8 * 1024 and spool.dropped_full > 0
        assert spool.next_seq == 304
