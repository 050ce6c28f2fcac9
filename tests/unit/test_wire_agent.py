from __future__ import annotations

import pydantic
import pytest

from zeitwork.wire.agent import NodeRegistration

BASE = {"hostname": "h1", "resources": {"vcpu": 2, "memory": 1024}}


@pytest.mark.parametrize("address", ["10.0.0.7", " 192.168.1.2 ", "fd00::1"])
def test_registration_accepts_ip_addresses(address: str) -> None:
    reg = NodeRegistration.model_validate({**BASE, "ip_address": address})
    assert reg.ip_address == address.strip()


@pytest.mark.parametrize("address", ["garbage", "[x", "10.0.0.300", "host.example", ""])
def test_registration_refuses_anything_but_an_ip_address(address: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="ip_address"):
        NodeRegistration.model_validate({**BASE, "ip_address": address})
