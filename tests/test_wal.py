"""WAL recovery: torn tails are cut, fsynced records are never lost, corruption is refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from node.raft import ConfState, Entry, EntryType, HardState, Ready, Snapshot
from node.storage import WAL, DiskStorage, SnapshotCorruption, SnapshotStore, WalCorruption, encode_snapshot
from node.storage.wal import MAGIC, encode_entry, encode_record


def _write(d: Path, n: int, batch: int = 5, segment_bytes: int = 1 << 20) -> list[Entry]:
    wal, _ = WAL.open(d, segment_bytes)
    ents = [Entry(i, 1 + i // 40, EntryType.NORMAL, b"v%d-" % i + bytes(i % 17)) for i in range(1, n + 1)]
    for i in range(0, n, batch):
        chunk = ents[i : i + batch]
        wal.save(HardState(chunk[-1].term, 1, chunk[-1].index), chunk)
    wal.close()
    return ents


def _segment(d: Path) -> Path:
    return sorted(d.glob("*.wal"))[-1]


def test_roundtrip_and_hard_state(tmp_path: Path) -> None:
    ents = _write(tmp_path, 100)
    _, st = WAL.open(tmp_path)
    assert st.entries == ents
    assert st.hard_state == HardState(ents[-1].term, 1, 100)
    assert st.truncated == []


def test_overwritten_tail_is_replaced(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path)
    wal.save(None, [Entry(i, 1, EntryType.NORMAL, b"a") for i in range(1, 6)])
    wal.save(None, [Entry(3, 2, EntryType.NORMAL, b"b"), Entry(4, 2, EntryType.NORMAL, b"b")])
    wal.close()
    _, st = WAL.open(tmp_path)
    assert [(e.index, e.term) for e in st.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]


def test_truncation_at_every_offset_never_loses_synced_records(tmp_path: Path) -> None:
    """Cut the file at random offsets: every record wholly before the cut survives, none after."""
    ents = _write(tmp_path / "src", 60, batch=1)
    seg = _segment(tmp_path / "src")
    blob = seg.read_bytes()
    _, full = WAL.open(tmp_path / "src")
    assert len(full.entries) == 60
    rng = random.Random(1)
    for cut in [*sorted(rng.sample(range(len(blob)), 120)), len(blob) - 1, 9]:
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / seg.name).write_bytes(blob[:cut])
        _, st = WAL.open(d)
        got = st.entries
        assert got == ents[: len(got)]  # a prefix, never a corrupted record
        # everything that fit entirely before the cut is there
        size = len(MAGIC) + len(encode_record(2, bytes(24)))
        expect = 0
        for e in ents:
            size += len(encode_entry(e))
            if size > cut:
                break
            expect += 1
            size += len(encode_record(2, bytes(24)))
        assert len(got) == expect, (cut, len(got), expect)
        # and the file was cut to a clean boundary: reopening again changes nothing
        _, again = WAL.open(d)
        assert again.entries == got and again.truncated == []


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    ents = _write(tmp_path, 10)
    seg = _segment(tmp_path)
    with open(seg, "ab") as f:
        f.write(bytes(4096))
    _, st = WAL.open(tmp_path)
    assert st.entries == ents and st.truncated


@pytest.mark.parametrize("where", [0.2, 0.5, 0.8])
def test_flipped_bit_in_the_middle_is_refused(tmp_path: Path, where: float) -> None:
    _write(tmp_path, 50)
    seg = _segment(tmp_path)
    blob = bytearray(seg.read_bytes())
    pos = int(len(blob) * where)
    blob[pos] ^= 0x10
    seg.write_bytes(bytes(blob))
    before = seg.read_bytes()
    with pytest.raises(WalCorruption) as ei:
        WAL.open(tmp_path)
    assert str(seg) in str(ei.value) and "offset" in str(ei.value)
    assert seg.read_bytes() == before  # nothing was modified


def test_flipped_bit_in_every_record_length_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, 20, batch=1)
    seg = _segment(tmp_path)
    blob = seg.read_bytes()
    # first record header sits right after the magic; flip a length bit there
    bad = bytearray(blob)
    bad[8 + 2] ^= 0x01
    seg.write_bytes(bytes(bad))
    with pytest.raises(WalCorruption, match="length checksum"):
        WAL.open(tmp_path)


def test_segments_cut_and_released(tmp_path: Path) -> None:
    ents = _write(tmp_path, 400, batch=10, segment_bytes=2000)
    segs = sorted(tmp_path.glob("*.wal"))
    assert len(segs) > 3
    wal, st = WAL.open(tmp_path, 2000)
    assert st.entries == ents
    removed = wal.release_to(300)
    wal.close()
    assert removed > 0
    _, st2 = WAL.open(tmp_path, 2000)
    assert st2.entries[0].index <= 300 and st2.entries[-1] == ents[-1]
    assert st2.hard_state.commit == 400


def test_snapshot_store_atomic_and_checked(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    s1 = Snapshot(10, 2, ConfState(frozenset({1, 2, 3}), frozenset({4})), b"state-10")
    s2 = Snapshot(20, 3, ConfState(frozenset({1, 2, 3}), frozenset()), b"state-20")
    store.save(s1)
    store.save(s2)
    assert store.load() == s2
    (tmp_path / "junk.tmp").write_bytes(b"partial")
    newest = sorted(tmp_path.glob("*.snap"))[-1]
    newest.write_bytes(encode_snapshot(s2)[:-1] + b"\x00")
    with pytest.raises(SnapshotCorruption):
        store.load()
    assert not (tmp_path / "junk.tmp").exists()


def test_disk_storage_snapshot_reset_drops_stale_entries(tmp_path: Path) -> None:
    ds, rec = DiskStorage.open(tmp_path)
    assert rec.meta is None and rec.entries == []
    ds.persist(Ready(hard_state=HardState(1, 0, 0), entries=[Entry(i, 1) for i in range(1, 6)], must_sync=True))
    snap = Snapshot(50, 3, ConfState(frozenset({1, 2, 3})), b"S")
    ds.persist(Ready(snapshot=snap, hard_state=HardState(3, 0, 50), must_sync=True))
    ds.persist(Ready(entries=[Entry(51, 3), Entry(52, 3)], must_sync=True))
    ds.close()
    _, rec = DiskStorage.open(tmp_path)
    assert rec.snapshot == snap
    assert [e.index for e in rec.entries] == [51, 52]
    assert rec.hard_state == HardState(3, 0, 50)


def _records(blob: bytes) -> list[tuple[int, int]]:
    """(offset, end) of every record in a segment."""
    out, pos = [], len(MAGIC)
    while pos < len(blob):
        n = int.from_bytes(blob[pos : pos + 4], "big")
        out.append((pos, pos + 13 + n))
        pos += 13 + n
    return out


@pytest.mark.parametrize("last", ["hard_state", "entry"])
def test_flipped_bit_anywhere_in_the_last_complete_record_is_refused(tmp_path: Path, last: str) -> None:
    """A complete, synced final record with a bad checksum is corruption, not a torn write."""
    wal, _ = WAL.open(tmp_path)
    for i in range(1, 30, 3):
        wal.save(HardState(2, 1, i), [Entry(j, 2, EntryType.NORMAL, b"value-%d" % j) for j in range(i, i + 3)])
    if last == "entry":
        wal.save(None, [Entry(31, 2, EntryType.NORMAL, b"the last one")])
    wal.close()
    seg = _segment(tmp_path)
    blob = seg.read_bytes()
    start, end = _records(blob)[-1]
    assert end == len(blob)
    for pos in range(start, end):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        seg.write_bytes(bytes(bad))
        with pytest.raises(WalCorruption) as ei:
            WAL.open(tmp_path)
        assert f"{seg} offset {start}" in str(ei.value), pos
        assert seg.read_bytes() == bytes(bad)  # nothing was modified


def test_flipped_bit_at_the_end_of_an_older_segment_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, 200, batch=10, segment_bytes=2000)
    first = sorted(tmp_path.glob("*.wal"))[0]
    blob = bytearray(first.read_bytes())
    blob[-1] ^= 0x01
    first.write_bytes(bytes(blob))
    with pytest.raises(WalCorruption, match=first.name):
        WAL.open(tmp_path)


def _big_batches(d: Path) -> tuple[list[Entry], Path]:
    wal, _ = WAL.open(d)
    ents = [Entry(i, 1, EntryType.NORMAL, bytes([0x41 + i % 26]) * 1500) for i in range(1, 9)]
    wal.save(HardState(1, 1, 0), ents[:4])
    wal.save(HardState(1, 1, 4), ents[4:])  # the batch a power loss will tear
    wal.close()
    return ents, _segment(d)


def test_an_unwritten_sector_inside_the_final_record_is_a_torn_write(tmp_path: Path) -> None:
    """The file grew but one of the last batch's sectors never reached the disk (etcd's isTornEntry)."""
    ents, seg = _big_batches(tmp_path)
    blob = bytearray(seg.read_bytes())
    recs = _records(bytes(blob))
    start, end = recs[-2]  # the last entry record, followed by the final hard state
    s = (start // 512 + 1) * 512
    assert s + 512 <= end
    blob[s : s + 512] = bytes(512)
    seg.write_bytes(bytes(blob))
    _, st = WAL.open(tmp_path)
    assert st.entries == ents[:7] and st.truncated == [f"{seg.name}@{start}"]


def test_an_unwritten_sector_mid_batch_is_torn_even_with_valid_records_after_it(tmp_path: Path) -> None:
    ents, seg = _big_batches(tmp_path)
    blob = bytearray(seg.read_bytes())
    recs = _records(bytes(blob))
    start, _ = recs[7]  # the second entry of the last batch: entries 5..8 and a hard state
    s = (start // 512 + 1) * 512
    blob[s : min(s + 512, len(blob))] = bytes(min(512, len(blob) - s))
    seg.write_bytes(bytes(blob))
    _, st = WAL.open(tmp_path)
    assert st.entries == ents[:5] and st.truncated == [f"{seg.name}@{start}"]


def test_an_unwritten_last_partial_sector_is_a_torn_write(tmp_path: Path) -> None:
    ents, seg = _big_batches(tmp_path)
    blob = bytearray(seg.read_bytes())
    s = (len(blob) - 1) // 512 * 512  # the file's last sector, cut by EOF
    start = next(a for a, b in _records(bytes(blob)) if a <= s < b)
    blob[s:] = bytes(len(blob) - s)
    seg.write_bytes(bytes(blob))
    _, st = WAL.open(tmp_path)
    recs = _records(bytes(blob))
    whole = [e for e, (_, b) in zip(ents, recs[1:5] + recs[6:10], strict=True) if b <= start]
    assert st.truncated == [f"{seg.name}@{start}"] and st.entries == whole


@pytest.mark.parametrize("where", ["inside", "record-end"])
def test_a_zero_run_that_stops_before_the_sector_end_does_not_excuse_a_bad_checksum(tmp_path: Path, where: str) -> None:
    """A power loss zeroes whole sectors (to EOF at most); zeros followed by data in the same
    sector are not a torn write, even when they end exactly where the record ends."""
    _, seg = _big_batches(tmp_path)
    blob = bytearray(seg.read_bytes())
    start, end = _records(bytes(blob))[-2]  # an entry record, followed by the final hard state
    if where == "inside":
        s = (start // 512 + 1) * 512
        blob[s : s + 500] = bytes(500)
    else:
        s = (end - 1) // 512 * 512
        assert end - s > 13 and s + 512 > end  # the next record continues in this sector
        blob[s:end] = bytes(end - s)
    seg.write_bytes(bytes(blob))
    with pytest.raises(WalCorruption, match=f"offset {start}"):
        WAL.open(tmp_path)
