"""Which runc containers an oci driver may touch: only those whose bundle is one of its own
directories (several agents may share a runc root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.runtime.oci import OciDriver, RuncCli


@pytest.mark.parametrize(
    ("bundle", "ours"),
    [
        ("{mine}/zw-0123", True),
        ("{mine}/../oci/zw-0123", True),
        ("{other}/zw-0123", False),
        ("{mine}/zw-0123/nested", False),
        ("{mine}/not-ours", False),
        ("", False),
        (None, False),
    ],
)
def test_owns_only_bundles_under_its_state_dir(
    tmp_path: Path, bundle: str | None, ours: bool
) -> None:
    mine, other = tmp_path / "a" / "oci", tmp_path / "b" / "oci"
    driver = OciDriver(runc=RuncCli(root=tmp_path / "runc"), state_dir=mine)
    value = None if bundle is None else bundle.format(mine=mine, other=other)
    assert driver.owns_bundle(value) is ours
