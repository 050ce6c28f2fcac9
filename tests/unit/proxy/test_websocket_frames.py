"""The WebSocket frame tracker finds every boundary between frames however the stream is cut
into reads, never stops inside a frame, and the close frames it builds parse as RFC 6455
close frames (checked against the ``websockets`` library's own frame parser)."""

from __future__ import annotations

import os
import struct

import pytest

from zeitwork.proxy.websocket import GOING_AWAY, FrameTracker, close_frame, header_size


def frame(opcode: int, payload: bytes, *, masked: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if masked else 0) | n))
    elif n < 65536:
        head = bytes((first, (0x80 if masked else 0) | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, (0x80 if masked else 0) | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def stream(masked: bool) -> tuple[bytes, list[int]]:
    """Frames of every length class (7-bit, 16-bit, 64-bit) and a fragmented message with a
    ping between its fragments; returns the bytes and the offsets where frames end."""
    frames = [frame(0x2, os.urandom(n), masked=masked) for n in SIZES]
    frames += [
        frame(0x1, b"frag", masked=masked, fin=False),
        frame(0x9, b"ping", masked=masked),
        frame(0x0, b"ment", masked=masked),
    ]
    ends, at = [], 0
    for f in frames:
        at += len(f)
        ends.append(at)
    return b"".join(frames), ends


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("read", [1, 2, 3, 7, 13, 14, 100, 4096, 1 << 20])
def test_boundaries_are_known_whatever_the_reads(masked: bool, read: int) -> None:
    data, ends = stream(masked)
    tracker = FrameTracker()
    seen = []
    for start in range(0, len(data), read):
        chunk = data[start : start + read]
        assert tracker.feed(chunk) == len(chunk)
        if tracker.at_boundary:
            seen.append(start + len(chunk))
    # a boundary is reported exactly when a read ends where a frame ends
    assert seen == [e for e in ends if e % read == 0 or e == len(data)]
    assert tracker.at_boundary and not tracker.close_seen and not tracker.broken


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("read", [1, 5, 64, 1000, 1 << 20])
def test_stop_at_boundary_never_stops_inside_a_frame(masked: bool, read: int) -> None:
    data, ends = stream(masked)
    tracker = FrameTracker()
    pos = 0
    stops = []
    while pos < len(data):
        chunk = data[pos : pos + read]
        used = tracker.feed(chunk, stop_at_boundary=True)
        if used == 0:  # at a boundary already: go on with one byte, as a plain feed
            stops.append(pos)
            tracker.feed(chunk[:1])
            pos += 1
            continue
        if used < len(chunk):
            assert tracker.at_boundary
            stops.append(pos + used)
        pos += used
    # it stops at every frame's end and nowhere else
    assert set(stops) == {0, *ends[:-1]}


def test_stop_at_boundary_at_a_boundary_consumes_nothing() -> None:
    tracker = FrameTracker()
    first = frame(0x1, b"hello")
    assert tracker.feed(first) == len(first)
    assert tracker.feed(frame(0x1, b"next"), stop_at_boundary=True) == 0


def test_a_split_header_is_completed_by_the_next_read() -> None:
    tracker = FrameTracker()
    big = frame(0x2, b"x" * 70000, masked=True)  # 2 + 8 + 4 header bytes
    assert tracker.feed(big[:5]) == 5 and not tracker.at_boundary
    assert tracker.feed(big[5:20], stop_at_boundary=True) == 15  # inside the payload
    rest = big[20:] + frame(0x1, b"after")
    assert tracker.feed(rest, stop_at_boundary=True) == len(big) - 20  # stops after it
    assert tracker.at_boundary


def test_a_close_frame_is_noticed_and_a_reserved_opcode_breaks_the_tracking() -> None:
    tracker = FrameTracker()
    tracker.feed(frame(0x1, b"bye") + frame(0x8, struct.pack("!H", 1000)))
    assert tracker.close_seen and tracker.at_boundary
    for not_websocket in (
        bytes((0x83, 0x00)),  # opcode 3 is reserved
        b"hello",  # RSV2 set (and a fragmented close)
        bytes((0x09, 0x00)),  # a fragmented ping
        bytes((0x89, 0x7E, 0x00, 0x80)),  # a 128-byte ping
    ):
        odd = FrameTracker()
        odd.feed(not_websocket)
        assert odd.broken and not odd.at_boundary, not_websocket
    deflated = FrameTracker()
    deflated.feed(bytes((0xC1, 0x03)) + b"abc")  # RSV1: permessage-deflate's bit
    assert deflated.at_boundary and not deflated.broken


def test_header_size() -> None:
    assert header_size(b"\x81", 0) == -1
    assert header_size(b"\x81\x05", 0) == 2
    assert header_size(b"\x81\x85", 0) == -1  # the mask key has not arrived
    assert header_size(b"\x81\x85abcd", 0) == 6
    assert header_size(b"\x82\x7e\x01\x00", 0) == 4
    assert header_size(b"\x82\xff" + b"\x00" * 12, 0) == 14


@pytest.mark.parametrize("masked", [False, True])
def test_close_frames_parse_as_rfc6455_close_frames(masked: bool) -> None:
    from websockets.frames import Close, Frame
    from websockets.streams import StreamReader

    data = close_frame(GOING_AWAY, b"going away", masked=masked)
    tracker = FrameTracker()
    assert tracker.feed(data) == len(data) and tracker.at_boundary and tracker.close_seen
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=masked)
    try:
        next(parser)
    except StopIteration as done:
        parsed: Frame = done.value
    else:  # pragma: no cover - the parser wants more bytes than the frame has
        raise AssertionError("incomplete close frame")
    close = Close.parse(parsed.data)
    assert (close.code, close.reason) == (1001, "going away")
