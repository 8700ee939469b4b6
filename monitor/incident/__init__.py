"""Incidents: opened by outages on their own, with a timeline that writes the review."""
