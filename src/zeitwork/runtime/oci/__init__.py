"""The ``oci`` runtime driver (runc, crun selectable)."""

from __future__ import annotations

from zeitwork.runtime.oci.driver import OciDriver, become_subreaper
from zeitwork.runtime.oci.runc import RuncCli

__all__ = ["OciDriver", "RuncCli", "become_subreaper"]
