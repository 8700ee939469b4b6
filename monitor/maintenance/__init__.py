"""Planned maintenance windows: schedule, announcements, node holds and maintenance mode."""
