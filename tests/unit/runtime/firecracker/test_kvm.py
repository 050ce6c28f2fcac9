from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from zeitwork.runtime.firecracker.kvm import probe_kvm

x86_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe is x86_64-only")


@x86_only
def test_probe_fails_on_a_device_that_is_not_kvm() -> None:
    ok, reason = probe_kvm(Path("/dev/null"))
    assert not ok
    assert "KVM" in reason


def test_probe_fails_when_the_device_is_missing(tmp_path: Path) -> None:
    ok, reason = probe_kvm(tmp_path / "kvm")
    assert not ok and "cannot be opened" in reason


@x86_only
@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
def test_probe_runs_a_guest_on_this_host() -> None:
    ok, reason = probe_kvm()
    # Either a real 64-bit guest halted, or KVM said exactly why it could not run one.
    assert ok == (reason == "/dev/kvm: a test guest ran to hlt"), reason
