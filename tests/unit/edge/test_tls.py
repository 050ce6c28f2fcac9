from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeitwork.edge.certificates.x509 import CertificateError, issue_leaf, self_signed_ca
from zeitwork.edge.tls import TlsTerminator, offered_alpn

CA, CA_KEY = self_signed_ca("unit CA")


def _pair(name: str) -> tuple[str, str]:
    return issue_leaf([name], ca_cert_pem=CA, ca_key_pem=CA_KEY)


def test_server_context_is_modern() -> None:
    ctx = TlsTerminator().server_context
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names and all("ECDHE" in n and ("GCM" in n or "CHACHA20" in n) for n in names)


def test_install_pick_wildcard_and_remove() -> None:
    tls = TlsTerminator()
    assert tls.context_for("a.test") is None
    tls.install("a.test", *_pair("a.test"))
    tls.install("*.apps.test", *_pair("*.apps.test"))
    a = tls.context_for("a.test")
    assert a is not None and tls.context_for("A.TEST.") is a
    wild = tls.context_for("x.apps.test")
    assert wild is not None and wild is not a
    assert tls.has_certificate("a.test") and tls.has_certificate("x.apps.test")
    assert not tls.has_certificate("y.x.apps.test") and not tls.has_certificate("b.test")
    # no default configured: a client without SNI, or naming an unknown host, gets none
    # (the handshake fails) rather than another app's certificate
    assert tls.context_for("unknown.test") is None
    assert tls.context_for(None) is None
    assert set(tls.domains()) == {"a.test", "*.apps.test"}
    old = a
    tls.install("a.test", *_pair("a.test"))
    assert tls.context_for("a.test") is not old  # a reload swaps in a fresh context
    tls.remove("a.test")
    assert not tls.has_certificate("a.test")


def test_bad_material_is_refused_and_keeps_the_old() -> None:
    tls = TlsTerminator()
    chain, key = _pair("a.test")
    tls.install("a.test", chain, key)
    before = tls.context_for("a.test")
    _, other_key = _pair("a.test")
    with pytest.raises(CertificateError):
        tls.install("a.test", chain, other_key)
    assert tls.context_for("a.test") is before


def test_challenge_context_only_for_acme_clients_until_cleared() -> None:
    tls = TlsTerminator(default_domain="a.test")
    tls.install("a.test", *_pair("a.test"))
    normal = tls.context_for("a.test")
    tls.set_challenge("a.test", *_pair("a.test"))
    assert tls.context_for("a.test", acme=True) is not normal
    assert tls.context_for("a.test") is normal  # everyone else keeps the real certificate
    assert tls.context_for("b.test", acme=True) is normal  # no challenge there: the default
    tls.clear_challenge("a.test")
    assert tls.context_for("a.test", acme=True) is normal


def _handshake(
    server_ctx: ssl.SSLContext, server_name: str, alpn: list[str]
) -> tuple[str, str | None]:
    """A real TLS handshake in memory; the subject CN the client saw and the ALPN agreed."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.set_alpn_protocols(alpn)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not complete"
    der = client.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    label = str(cn[0].value) if cn else ",".join(san.get_values_for_type(x509.DNSName))
    return label + ("+acme" if _is_challenge(cert) else ""), client.selected_alpn_protocol()


def _is_challenge(cert: object) -> bool:
    from cryptography import x509
    from cryptography.x509.oid import ObjectIdentifier

    assert isinstance(cert, x509.Certificate)
    try:
        cert.extensions.get_extension_for_oid(ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    except x509.ExtensionNotFound:
        return False
    return True


def test_pending_tls_alpn_challenge_is_served_to_the_validator_only() -> None:
    from zeitwork.edge.certificates.acme import tls_alpn_certificate

    tls = TlsTerminator()
    tls.install("a.test", *_pair("a.test"))
    tls.set_challenge("a.test", *tls_alpn_certificate("a.test", "token.thumbprint"))
    ctx = tls.server_context
    # a browser (http/1.1) during the challenge: the real certificate, ALPN http/1.1
    label, alpn = _handshake(ctx, "a.test", ["h2", "http/1.1"])
    assert (label, alpn) == ("a.test", "http/1.1")
    # the CA's validation (acme-tls/1 only): the challenge certificate, ALPN acme-tls/1
    label, alpn = _handshake(ctx, "a.test", ["acme-tls/1"])
    assert label.endswith("+acme") and alpn == "acme-tls/1"
    # and a browser again right after (no state carried over from the validator)
    assert _handshake(ctx, "a.test", ["http/1.1"])[0] == "a.test"
    tls.clear_challenge("a.test")
    assert ctx._msg_callback is None  # type: ignore[attr-defined]  # hot path back to bare
    assert _handshake(ctx, "a.test", ["acme-tls/1"])[0] == "a.test"


def _client_hello(alpn: list[str] | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    out = ssl.MemoryBIO()
    client = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="a.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    record = out.read()
    assert record[0] == 22  # one handshake record holding the ClientHello
    return record[5 : 5 + int.from_bytes(record[3:5], "big")]


def test_offered_alpn_reads_real_client_hellos() -> None:
    assert offered_alpn(_client_hello(["acme-tls/1"])) == [b"acme-tls/1"]
    assert offered_alpn(_client_hello(["h2", "http/1.1"])) == [b"h2", b"http/1.1"]
    assert offered_alpn(_client_hello(None)) is None
    hello = _client_hello(["acme-tls/1"])
    for cut in range(len(hello)):  # every truncation: an answer or None, never an exception
        result = offered_alpn(hello[:cut])
        assert result is None or all(isinstance(n, bytes) for n in result)
    assert offered_alpn(b"\x02" + hello[1:]) is None  # not a ClientHello


@given(st.binary(max_size=600))
def test_offered_alpn_never_raises_on_garbage(data: bytes) -> None:
    result = offered_alpn(data)
    assert result is None or isinstance(result, list)


def test_set_default_serves_clients_without_sni() -> None:
    tls = TlsTerminator()
    tls.install("a.test", *_pair("a.test"))
    first_default = tls.context_for(None)
    info = tls.set_default(*_pair("static.test"))
    assert info.names == ("static.test",)
    assert tls.context_for(None) is not first_default
    assert tls.context_for("unknown.test") is tls.context_for(None)
    assert tls.domains() == ["a.test"]  # the default alone adds no metric label


def test_the_configured_default_domain_serves_clients_without_sni() -> None:
    tls = TlsTerminator(default_domain="B.test.")
    tls.install("a.test", *_pair("a.test"))
    assert tls.context_for(None) is None  # b.test has no certificate yet
    tls.install("b.test", *_pair("b.test"))
    b = tls.context_for("b.test")
    assert b is not None
    assert tls.context_for(None) is b
    assert tls.context_for("unknown.test") is b
    assert tls.context_for("a.test") is not b


def test_reinstalling_the_default_host_updates_the_default() -> None:
    tls = TlsTerminator(default_domain="a.test")
    tls.install("a.test", *_pair("a.test"))
    tls.install("b.test", *_pair("b.test"))
    tls.install("a.test", *_pair("a.test"))  # renewal of the default host
    assert tls.context_for(None) is tls.context_for("a.test")
    assert tls.context_for("b.test") is not tls.context_for(None)


def test_tls_alpn_challenge_reaches_the_other_workers(tmp_path: object) -> None:
    from pathlib import Path

    from zeitwork.edge.certificates.acme import tls_alpn_certificate
    from zeitwork.edge.certificates.challenges import Challenges

    shared = Path(str(tmp_path)) / "challenges"
    first, other = TlsTerminator(), TlsTerminator()
    for tls in (first, other):
        tls.install("a.test", *_pair("a.test"))
    publisher = Challenges(tls=first, directory=shared, propagation=0)
    follower = Challenges(tls=other, directory=shared)
    publisher.publish_tls_alpn("a.test", *tls_alpn_certificate("a.test", "token.thumbprint"))
    files = list((shared / "tls-alpn").iterdir())
    assert [f.name for f in files] == ["a.test.json"]
    assert files[0].stat().st_mode & 0o777 == 0o600  # it holds a private key
    assert _handshake(other.server_context, "a.test", ["acme-tls/1"])[0] == "a.test"  # not yet
    follower.sync_tls_alpn()
    label, alpn = _handshake(other.server_context, "a.test", ["acme-tls/1"])
    assert label.endswith("+acme") and alpn == "acme-tls/1"
    assert _handshake(other.server_context, "a.test", ["http/1.1"])[0] == "a.test"
    publisher.withdraw_tls_alpn("a.test")
    follower.sync_tls_alpn()
    assert _handshake(other.server_context, "a.test", ["acme-tls/1"])[0] == "a.test"
    # names that are not host names never become paths
    publisher.publish_tls_alpn("../x", *tls_alpn_certificate("x.test", "t.t"))
    assert list((shared / "tls-alpn").iterdir()) == []
