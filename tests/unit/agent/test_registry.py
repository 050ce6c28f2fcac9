from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.runtime.registry import HostOffer, choose, probe

FULL = HostOffer(
    kvm=True,
    kvm_reason="/dev/kvm opens read-write",
    firecracker_bin=Path("/usr/bin/firecracker"),
    jailer_bin=Path("/usr/bin/jailer"),
    kernel=Path("/var/lib/vmlinux"),
    oci_runtime="/usr/bin/runc",
)


def _without(**changes: object) -> HostOffer:
    values = {f: getattr(FULL, f) for f in FULL.__dataclass_fields__}
    values.update(changes)
    return HostOffer(**values)  # type: ignore[arg-type]


def test_auto_picks_firecracker_when_everything_is_there() -> None:
    choice = choose("auto", FULL)
    assert choice.name == "firecracker"
    assert "auto" in choice.reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"kvm": False, "kvm_reason": "/dev/kvm does not exist"}, "/dev/kvm does not exist"),
        ({"firecracker_bin": None}, "FIRECRACKER_BIN"),
        ({"jailer_bin": None}, "JAILER_BIN"),
        ({"kernel": None}, "FIRECRACKER_KERNEL"),
    ],
)
def test_auto_falls_back_to_oci_and_says_why(change: dict[str, object], why: str) -> None:
    choice = choose("auto", _without(**change))
    assert choice.name == "oci"
    assert why in choice.reason


def test_explicit_choices_are_checked() -> None:
    assert choose("oci", FULL).name == "oci"
    assert choose("firecracker", FULL).name == "firecracker"
    with pytest.raises(InvalidInput, match="JAILER_BIN"):
        choose("firecracker", _without(jailer_bin=None))
    with pytest.raises(InvalidInput, match="not installed"):
        choose("oci", _without(oci_runtime=None))
    with pytest.raises(InvalidInput, match="no runtime"):
        choose("auto", _without(oci_runtime=None, kernel=None))


def test_probe_reports_missing_things(tmp_path: Path) -> None:
    offer = probe(
        firecracker_bin=tmp_path / "nope",
        jailer_bin=None,
        kernel=tmp_path / "vmlinux",
        oci_runtime="definitely-not-installed-runtime",
        kvm_device=tmp_path / "kvm",
    )
    assert offer.kvm is False and "does not exist" in offer.kvm_reason
    assert offer.firecracker_bin is None and offer.jailer_bin is None and offer.kernel is None
    assert offer.oci_runtime is None
    assert (
        choose("auto", _without(**{"oci_runtime": "/usr/bin/runc", "kvm": offer.kvm})).name == "oci"
    )
