"""When a certificate is due (pure): missing, failed and its back-off passed, or at two
thirds of its lifetime."""

from __future__ import annotations

from datetime import datetime, timedelta

from zeitwork.clients.certificates import CertificateRecord


def renew_at(record: CertificateRecord) -> datetime | None:
    if record.not_before is None or record.not_after is None:
        return None
    return record.not_before + (record.not_after - record.not_before) * 2 / 3


def is_due(record: CertificateRecord | None, now: datetime) -> bool:
    if record is None:
        return True
    if record.next_attempt_at is not None and now < record.next_attempt_at:
        return False
    if record.status != "issued":
        return True
    at = renew_at(record)
    return at is None or now >= at


def backoff(attempts: int, *, base: float = 60.0, cap: float = 6 * 3600.0) -> timedelta:
    """Delay before retry number ``attempts`` (1-based): base, 2*base, 4*base, ... capped."""
    exponent = max(0, min(attempts - 1, 30))
    return timedelta(seconds=min(cap, base * (2**exponent)))


def failed(
    record: CertificateRecord | None,
    domain: str,
    error: str,
    now: datetime,
    *,
    base: float = 60.0,
) -> CertificateRecord:
    """The record after a failed attempt: the old certificate (if any) is kept and served."""
    current = record or CertificateRecord(domain=domain)
    attempts = current.attempts + 1
    return current.evolve(
        status="issued" if current.cert_pem and current.status == "issued" else "failed",
        last_error=error[:1000],
        attempts=attempts,
        next_attempt_at=now + backoff(attempts, base=base),
    )
