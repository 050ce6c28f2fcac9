from __future__ import annotations

import ssl

import pytest

from zeitwork.edge.certificates.x509 import CertificateError, issue_leaf, self_signed_ca
from zeitwork.edge.tls import TlsTerminator

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
    assert tls.context_for("unknown.test") is a  # the first certificate is the default
    assert tls.context_for(None) is a
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


def test_challenge_context_takes_precedence_until_cleared() -> None:
    tls = TlsTerminator()
    tls.install("a.test", *_pair("a.test"))
    normal = tls.context_for("a.test")
    tls.set_challenge("a.test", *_pair("a.test"))
    assert tls.context_for("a.test") is not normal
    tls.clear_challenge("a.test")
    assert tls.context_for("a.test") is normal


def test_set_default_serves_clients_without_sni() -> None:
    tls = TlsTerminator()
    tls.install("a.test", *_pair("a.test"))
    first_default = tls.context_for(None)
    info = tls.set_default(*_pair("static.test"))
    assert info.names == ("static.test",)
    assert tls.context_for(None) is not first_default
    assert tls.context_for("unknown.test") is tls.context_for(None)
    assert tls.domains() == ["a.test"]  # the default alone adds no metric label


def test_reinstalling_the_default_host_updates_the_default() -> None:
    tls = TlsTerminator()
    tls.install("a.test", *_pair("a.test"))
    tls.install("b.test", *_pair("b.test"))
    tls.install("a.test", *_pair("a.test"))  # renewal of the default host
    assert tls.context_for(None) is tls.context_for("a.test")
    assert tls.context_for("b.test") is not tls.context_for(None)
