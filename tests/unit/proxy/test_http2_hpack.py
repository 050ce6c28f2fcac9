"""The proxy's HPACK encoder, read back by the hpack library's decoder (what h2 uses, and an
independent implementation of RFC 7541)."""

from __future__ import annotations

import hpack
import pytest
from hpack.table import HeaderTable

from zeitwork.proxy.h2_hpack import STATIC_TABLE, HeaderEncoder

_RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"text/html"),
    (b"content-length", b"1024"),
    (b"x-request-id", b"0123456789abcdef"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"set-cookie", b"session=secret"),
    (b"x-custom", b""),
]


def _decode(decoder: hpack.Decoder, block: bytes) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


def test_a_response_reads_back_field_for_field_over_many_blocks() -> None:
    encoder, decoder = HeaderEncoder(), hpack.Decoder()
    for _ in range(3):
        assert _decode(decoder, encoder.encode(_RESPONSE)) == _RESPONSE
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing was ever indexed


def test_static_fields_are_one_byte_and_names_come_from_the_table() -> None:
    encoder = HeaderEncoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    assert encoder.encode([(b":status", b"404")]) == b"\x8d"
    # content-length is index 28: literal without indexing, 4-bit prefix 15 + 13
    assert encoder.encode([(b"content-length", b"5")]) == b"\x0f\x0d\x015"
    # a name the table lacks is sent as a string, lower-case
    assert encoder.encode([(b"x-a", b"b")]) == b"\x00\x03x-a\x01b"
    assert encoder.encode([(b"X-A", b"b")]) == b"\x00\x03x-a\x01b"


def test_sensitive_fields_are_marked_never_indexed() -> None:
    encoder = HeaderEncoder()
    block = encoder.encode([(b"set-cookie", b"a=1"), (b"authorization", b"t")])
    # set-cookie is index 55, authorization 23: the never-indexed form (0001 prefix)
    assert block == b"\x1f\x28\x03a=1\x1f\x08\x01t"
    decoded = hpack.Decoder().decode(block, raw=True)
    assert all(isinstance(f, hpack.NeverIndexedHeaderTuple) for f in decoded)


@pytest.mark.parametrize("size", [0, 126, 127, 128, 300, 70_000])
def test_long_names_and_values_use_multi_byte_lengths(size: int) -> None:
    fields = [(b"x-" + b"n" * size, b"v" * size), (b"etag", b"e" * size)]
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    assert _decode(decoder, HeaderEncoder().encode(fields)) == fields


def test_a_table_size_change_is_answered_with_an_update_to_zero() -> None:
    encoder, decoder = HeaderEncoder(), hpack.Decoder()
    decoder.header_table_size = 0  # the peer's SETTINGS_HEADER_TABLE_SIZE went to 0
    encoder.header_table_size = 0  # h2 tells the encoder
    block = encoder.encode(_RESPONSE)
    assert block[:1] == b"\x20"
    assert _decode(decoder, block) == _RESPONSE
    assert encoder.encode([(b":status", b"200")]) == b"\x88"  # once


def test_the_table_is_rfc_7541s() -> None:
    assert len(STATIC_TABLE) == 61
    assert STATIC_TABLE[0] == (b":authority", b"")
    assert STATIC_TABLE[7] == (b":status", b"200")
    assert STATIC_TABLE[60] == (b"www-authenticate", b"")
    assert STATIC_TABLE == HeaderTable.STATIC_TABLE  # the library's copy
