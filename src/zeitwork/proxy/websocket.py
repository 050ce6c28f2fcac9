"""WebSocket frame boundaries (RFC 6455 section 5.2), tracked without buffering the frames.

An upgraded WebSocket connection is relayed as raw bytes; to close one on a drain with a
close frame (code 1001, Going Away) the proxy must write that frame between two frames of the
stream, never inside one. ``FrameTracker`` follows one direction of the stream: it reads each
frame's header (opcode, mask bit, payload length) and skips its payload by count, so it costs
a few operations per frame whatever the frame's size, and it never holds payload bytes (a
header split across reads is kept, at most 13 bytes). ``close_frame`` builds the close frame
for either direction (masked towards a server, as a client must send it).
"""

from __future__ import annotations

import os
import struct

GOING_AWAY = 1001  # the endpoint goes away: a server going down, a browser leaving a page
OP_CLOSE = 0x8
# opcodes RFC 6455 defines: continuation, text, binary, close, ping, pong
_KNOWN_OPCODES = frozenset({0x0, 0x1, 0x2, 0x8, 0x9, 0xA})


class FrameTracker:
    """Where the frames of one direction of a WebSocket stream begin and end.

    ``feed(data)`` consumes ``data`` and returns how many bytes of it were consumed: all of
    them, or with ``stop_at_boundary`` only up to the first point between two frames (0 when
    the stream is there already). ``at_boundary``: the bytes fed so far end a frame.
    ``close_seen``: a close frame has begun in this direction (the endpoint is closing).
    ``broken``: the bytes do not frame as WebSocket (a reserved opcode or bit, a fragmented or
    long control frame); nothing is reliable
    about this stream any more and nothing may be written into it.
    """

    __slots__ = ("_head", "_left", "broken", "close_seen")

    def __init__(self) -> None:
        self._head = b""  # the start of a header split across reads
        self._left = 0  # payload bytes of the current frame still to come
        self.close_seen = False
        self.broken = False

    @property
    def at_boundary(self) -> bool:
        return self._left == 0 and not self._head and not self.broken

    def feed(self, data: bytes, stop_at_boundary: bool = False) -> int:
        end = len(data)
        pos = 0
        while True:
            left = self._left
            if left:
                take = end - pos
                if take < left:
                    self._left = left - take
                    return end
                pos += left
                self._left = 0
                if stop_at_boundary:
                    return pos
            if pos >= end or self.broken:
                return end
            if stop_at_boundary and not self._head:
                return pos
            head = self._head
            if head:
                # a header split across reads: join what is kept with the start of this read
                buf = head + data[pos : pos + 14]
                size = header_size(buf, 0)
                if size < 0:
                    self._head = buf
                    return end
                self._head = b""
                pos += size - len(head)
                payload = self._payload(buf, 0)
            else:
                size = header_size(data, pos)
                if size < 0:
                    self._head = data[pos:]
                    return end
                payload = self._payload(data, pos)
                pos += size
            if payload < 0:
                return end
            self._left = payload

    def _payload(self, buf: bytes, at: int) -> int:
        """The payload length of the (complete) header at ``buf[at:]``, noting its opcode;
        -1 (and ``broken``) for a header RFC 6455 does not allow."""
        first = buf[at]
        opcode = first & 0x0F
        length = buf[at + 1] & 0x7F
        # RSV2/RSV3 are set by no extension in use (RSV1 is permessage-deflate's), and a
        # control frame is never fragmented nor longer than 125 bytes
        if (
            opcode not in _KNOWN_OPCODES
            or first & 0x30
            or (opcode >= 0x8 and (not first & 0x80 or length > 125))
        ):
            self.broken = True
            return -1
        if opcode == OP_CLOSE:
            self.close_seen = True
        if length == 126:
            return int(struct.unpack_from("!H", buf, at + 2)[0])
        if length == 127:
            return int(struct.unpack_from("!Q", buf, at + 2)[0])
        return length


def header_size(buf: bytes, at: int) -> int:
    """The size of the frame header at ``buf[at:]``, or -1 when ``buf`` ends inside it."""
    if len(buf) - at < 2:
        return -1
    second = buf[at + 1]
    length = second & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
    return size if len(buf) - at >= size else -1


def close_frame(code: int = GOING_AWAY, reason: bytes = b"", *, masked: bool) -> bytes:
    """A close frame with ``code`` (and a short ``reason``); ``masked`` for a client's frame
    (the proxy writing to a backend), unmasked for a server's (writing to a client)."""
    payload = struct.pack("!H", code) + reason[:123]
    if not masked:
        return bytes((0x80 | OP_CLOSE, len(payload))) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | OP_CLOSE, 0x80 | len(payload))) + key + body
