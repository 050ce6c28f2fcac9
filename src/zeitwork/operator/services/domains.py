"""Domain verification: the owner publishes the domain's token in DNS, the operator looks.

A domain is verified when a TXT record at ``_zeitwork.<name>`` holds its verification token
(for ``*.example.com``: at ``_zeitwork.example.com``). Only verified domains get ACME
certificates from the edges (the route table says which are), so nobody can make the platform
ask a CA for a name they do not control.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from zeitwork.core.errors import Conflict, ServiceUnavailable
from zeitwork.operator.db.projects import Domain, ProjectStore

RECORD_PREFIX = "_zeitwork."
LOOKUP_TIMEOUT = 5.0


def record_name(domain: str) -> str:
    """Where the TXT record for ``domain`` lives."""
    return RECORD_PREFIX + domain.removeprefix("*.")


@dataclass(frozen=True, slots=True)
class DnsTxt:
    """TXT lookups through dnspython's asyncio resolver."""

    servers: tuple[tuple[str, int], ...] = ()
    timeout: float = LOOKUP_TIMEOUT

    async def lookup(self, name: str) -> list[str]:
        """The TXT strings at ``name`` ([] when the name or the record does not exist)."""
        try:
            resolver = dns.asyncresolver.Resolver(configure=not self.servers)
            if self.servers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self.servers
                ]
            resolver.lifetime = self.timeout
            answer = await resolver.resolve(name, "TXT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError) as exc:
            raise ServiceUnavailable(f"DNS lookup of {name} failed: {exc}") from exc
        if answer.rrset is None:
            return []
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset]


class DomainVerifier:
    def __init__(self, *, projects: ProjectStore, dns: DnsTxt) -> None:
        self._projects = projects
        self._dns = dns

    async def verify(self, domain_id: uuid.UUID) -> Domain:
        """Look for the token in DNS; verified (and the route table bumped) when found,
        Conflict naming the record to publish when not."""
        domain = await self._projects.get_domain(domain_id)
        if domain.verified:
            return domain
        token = domain.verification_token or ""
        name = record_name(domain.name)
        found = await self._dns.lookup(name)
        if token not in found:
            raise Conflict(
                f'domain {domain.name} is not verified: publish a TXT record "{name}" '
                f'with the value "{token}" and try again'
                + (f" (found: {', '.join(repr(v) for v in found[:3])})" if found else "")
            )
        return await self._projects.mark_domain_verified(domain_id)
