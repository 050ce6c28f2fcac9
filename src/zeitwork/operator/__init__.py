"""Zeitwork operator."""
