"""Zeitwork proxy."""
