"""Launchers: start and supervise engine processes for the models a config declares."""
