"""The hook records (``ClientInfo``, ``RequestHead``, ``LocalResponse``): value semantics as
the dataclasses they replaced had (equality, repr, defaults), in the compiled build too
(tests/integration/compiled runs this module against the release wheel)."""

from __future__ import annotations

import pytest

from zeitwork.proxy.types import ClientInfo, LocalResponse, RequestHead


def test_client_info_defaults_equality_and_repr() -> None:
    info = ClientInfo(peer_ip="10.0.0.1", client_ip="192.0.2.7")
    assert (info.tls, info.sni) == (False, None)
    assert info == ClientInfo("10.0.0.1", "192.0.2.7", False, None)
    assert info != ClientInfo("10.0.0.1", "192.0.2.7", tls=True)
    assert info != ("10.0.0.1", "192.0.2.7", False, None)  # another type is never equal
    assert repr(info) == (
        "ClientInfo(peer_ip='10.0.0.1', client_ip='192.0.2.7', tls=False, sni=None)"
    )


def test_request_head_positional_and_keyword_forms_agree() -> None:
    headers = [(b"host", b"a.test")]
    positional = RequestHead(b"GET", b"/x?y=1", "/x", "a.test", "1.1", headers, False, "rid")
    keyword = RequestHead(
        method=b"GET",
        target=b"/x?y=1",
        path="/x",
        host="a.test",
        http_version="1.1",
        headers=headers,
        keep_alive=False,
        request_id="rid",
    )
    assert positional == keyword
    assert RequestHead(b"GET", b"/", "/", "a.test", "1.1", []).keep_alive is True
    assert repr(keyword).startswith("RequestHead(method=b'GET', target=b'/x?y=1', path='/x'")


def test_local_response_gets_a_header_list_of_its_own() -> None:
    first, second = LocalResponse(204), LocalResponse(status=204)
    first.headers.append((b"x-a", b"1"))
    assert second.headers == []  # not one shared default list
    assert (second.body, second.close) == (b"", False)
    assert LocalResponse(200, [(b"x", b"y")], b"hi", close=True) == LocalResponse(
        status=200, headers=[(b"x", b"y")], body=b"hi", close=True
    )


def test_records_are_mutable_and_not_hashable() -> None:
    info = ClientInfo("10.0.0.1", "10.0.0.1")
    info.client_ip = "192.0.2.9"
    assert info.client_ip == "192.0.2.9"
    with pytest.raises(TypeError):
        hash(info)
