"""Zeitwork runtime."""
