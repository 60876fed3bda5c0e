"""ops-workers: backups, restore drills and alert-driven incident response for the platform."""

__version__ = "0.1.0"
