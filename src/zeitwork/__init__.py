"""Zeitwork: run containerized apps in Firecracker microVMs or OCI containers across a fleet."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
