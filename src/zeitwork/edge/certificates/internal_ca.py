"""The internal CA: created once, kept in the data directory, issues a leaf per domain.

It is the default in development: every domain the platform serves gets a certificate at
once, trusted by whoever trusts ``ca.crt`` (``curl --cacert``, or ``zeitwork domains ca``
from the operator). The CA key is written 0600 in a 0700 directory. With the operator as the
certificate store the CA is shared (``shared``): the first edge's CA is stored there and
every other edge issues with it, so one ``ca.crt`` is trusted for all of them.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from zeitwork.clients.certificates import CertificateRecord
from zeitwork.core.files import atomic_write_text
from zeitwork.edge.certificates.store import EdgeCertificateStore
from zeitwork.edge.certificates.x509 import inspect, issue_leaf, self_signed_ca


class InternalCA:
    def __init__(self, *, cert_pem: str, key_pem: str, leaf_days: int = 90) -> None:
        self.cert_pem = cert_pem
        self._key_pem = key_pem
        self._leaf_days = leaf_days
        self._cert = x509.load_pem_x509_certificate(cert_pem.encode())
        self._checked: dict[str, bool] = {}  # chain PEM -> issued by this CA

    def issued(self, chain_pem: str) -> bool:
        """Whether the leaf of ``chain_pem`` was signed by this CA (remembered per chain)."""
        known = self._checked.get(chain_pem)
        if known is not None:
            return known
        try:
            leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
            leaf.verify_directly_issued_by(self._cert)
            mine = True
        except (ValueError, TypeError, IndexError, InvalidSignature):
            mine = False
        if len(self._checked) >= 10_000:
            self._checked.clear()
        self._checked[chain_pem] = mine
        return mine

    @classmethod
    def load_or_create(cls, directory: Path, *, leaf_days: int = 90) -> InternalCA:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            return cls(
                cert_pem=cert_path.read_text(), key_pem=key_path.read_text(), leaf_days=leaf_days
            )
        cert, key = self_signed_ca("Zeitwork internal CA")
        # the key first: a crash before the certificate is written leaves no pair, and the
        # next start makes a new one (over the lone key)
        atomic_write_text(key_path, key, mode=0o600)
        atomic_write_text(cert_path, cert)
        return cls(cert_pem=cert, key_pem=key, leaf_days=leaf_days)

    @classmethod
    async def shared(
        cls, directory: Path, store: EdgeCertificateStore, *, leaf_days: int = 90
    ) -> InternalCA:
        """This edge's CA offered to ``store``; the one the store keeps (maybe another
        edge's) replaces the local files when it differs."""
        own = cls.load_or_create(directory, leaf_days=leaf_days)
        cert, key = await store.offer_internal_ca(own.cert_pem, own._key_pem)
        if cert == own.cert_pem:
            return own
        atomic_write_text(directory / "ca.key", key, mode=0o600)
        atomic_write_text(directory / "ca.crt", cert)
        return cls(cert_pem=cert, key_pem=key, leaf_days=leaf_days)

    def issue(self, domain: str) -> CertificateRecord:
        chain, key = issue_leaf(
            [domain], ca_cert_pem=self.cert_pem, ca_key_pem=self._key_pem, days=self._leaf_days
        )
        info = inspect(chain)
        return CertificateRecord(
            domain=domain,
            cert_pem=chain,
            key_pem=key,
            status="issued",
            source="internal",
            not_before=info.not_before,
            not_after=info.not_after,
        )
