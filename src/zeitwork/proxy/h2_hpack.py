"""An HPACK encoder (RFC 7541) for the ``h2`` library, in place of h2's own.

The edge's HTTP/2 connections used it while they were on ``h2``; they are on libnghttp2 now
(``proxy.http2``), whose encoder runs there with a dynamic table of size 0, to the same
effect. It stays for the ``h2`` baseline of ``benchmarks/h2_server.py`` (what the edge did
before) and any ``h2`` connection that sends responses.

It writes each field either as an entry of the static table (``:status: 200``) or as a
literal that is never added to a dynamic table: a name from the static table where there is
one, values as plain strings (no Huffman coding). So nothing a response carries (a session
cookie, a token) ever enters a compression context that later fields are compressed
against, and encoding is a few dictionary lookups and byte copies per field. The cost is
bytes on the wire: about 300 more per response than an encoder that indexes and
Huffman-codes. Decoding stays h2's (``hpack.Decoder``): that side reads untrusted input.

h2 sets ``header_table_size`` when the peer's SETTINGS_HEADER_TABLE_SIZE changes; the next
header block then starts with a dynamic table size update to 0 (RFC 7541 4.2 and 6.3), which
is always within what the peer allows.
"""

from __future__ import annotations

from collections.abc import Iterable

# RFC 7541 Appendix A: index -> (name, value)
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
# a whole field of the table -> its "indexed header field" byte (RFC 7541 6.1)
_INDEXED: dict[tuple[bytes, bytes], bytes] = {
    field: bytes([0x80 | index])
    for index, field in enumerate(STATIC_TABLE, start=1)
    if field[1] or field[0] == b":authority"
}
_INDEXED.pop((b":authority", b""))  # an empty authority is never sent
_NEVER_INDEXED_NAMES = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"}
)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` on a ``prefix_bits`` prefix, ``first`` holding the flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal_prefix(first: int) -> dict[bytes, bytes]:
    """Name -> the first bytes of a literal field naming it by its static index (4-bit
    prefix; the first index of a name, RFC 7541 2.3.3)."""
    out: dict[bytes, bytes] = {}
    for index, (name, _) in enumerate(STATIC_TABLE, start=1):
        if name not in out:
            out[name] = _integer(index, 4, first)
    return out


_WITHOUT_INDEXING = _literal_prefix(0x00)  # RFC 7541 6.2.2
_NEVER_INDEXED = _literal_prefix(0x10)  # RFC 7541 6.2.3


def _string(value: bytes) -> bytes:
    """RFC 7541 5.2, without Huffman coding."""
    n = len(value)
    if n < 127:
        return bytes([n]) + value
    return _integer(n, 7, 0) + value


class HeaderEncoder:
    """What h2 asks of an HPACK encoder: ``encode`` and ``header_table_size``."""

    def __init__(self) -> None:
        self._table_size = 4096
        self._size_update = False  # the next block starts with a table size update to 0

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self._size_update = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        """One header block for ``headers`` (``huffman`` is accepted and not used)."""
        out: list[bytes] = []
        if self._size_update:
            self._size_update = False
            out.append(b"\x20")
        indexed = _INDEXED
        for name, value in headers:
            whole = indexed.get((name, value))
            if whole is not None:
                out.append(whole)
                continue
            never = name in _NEVER_INDEXED_NAMES
            prefix = (_NEVER_INDEXED if never else _WITHOUT_INDEXING).get(name)
            if prefix is None:  # a name the table lacks, sent lower-case (RFC 9113 8.2.1)
                out.append(b"\x10" if never else b"\x00")
                out.append(_string(name if name.islower() or not name else name.lower()))
            else:
                out.append(prefix)
            out.append(_string(value))
        return b"".join(out)
