"""Zeitwork lb."""
