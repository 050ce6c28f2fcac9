"""Zeitwork images."""
