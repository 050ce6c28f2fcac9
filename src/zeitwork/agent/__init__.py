"""Zeitwork agent."""
