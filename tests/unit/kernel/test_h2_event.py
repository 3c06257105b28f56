"""loader._h2_event: a tw_h2_events record (abi.H2EventHead + bytes) as an H2Event."""

from __future__ import annotations

from tenantwatch.kernel import abi, loader
from tenantwatch.kernel.records import H2Event, Side


def record(conn=5, ts=123, seq=7, length=4, side=abi.SIDE_SERVER, is_req=1, flags=0,
           data=b"abcd") -> bytes:
    return loader._H2_HEAD.pack(conn, ts, seq, length, side, is_req, flags) + data


def test_every_field_comes_from_the_record() -> None:
    assert loader._h2_event(record()) == H2Event(5, Side.SERVER, True, 7, 123, b"abcd")
    ev = loader._h2_event(record(conn=9, ts=1, seq=0, length=0, side=1 - abi.SIDE_SERVER,
                                 is_req=0, flags=abi.H2_F_CLOSED, data=b""))
    assert ev == H2Event(9, Side.CLIENT, False, 0, 1, b"", closed=True)
    assert type(ev) is H2Event and ev.side is Side.CLIENT and ev.is_request is False
    ev = loader._h2_event(record(flags=abi.H2_F_MIDSTREAM))
    assert ev.midstream is True and ev.closed is False and ev.lost is False


def test_the_bytes_are_bounded_by_the_length_the_record_and_two_chunks() -> None:
    assert loader._h2_event(record(length=2)).data == b"ab"  # the length field
    assert loader._h2_event(record(length=99)).data == b"abcd"  # what the record holds
    big = b"z" * (3 * abi.H2_CHUNK)
    assert len(loader._h2_event(record(length=len(big), data=big)).data) == 2 * abi.H2_CHUNK
    assert loader._h2_event(record()[:loader._H2_HEAD.size - 1]) is None  # a short record
