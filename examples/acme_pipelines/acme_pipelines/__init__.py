"""Acme's SkyPilot pipelines: shapes of its own, run by its own worker through SkyPilotPlugin."""
