"""Zeitwork edge."""
