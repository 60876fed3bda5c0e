"""What every `ops-workers` command shares: exit codes, loading settings, JSON output."""

from __future__ import annotations

import json
import sys

import click

from workers.errors import ConfigError
from workers.logs import configure_logging
from workers.settings import Settings, get_settings

EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed, or a service is unreachable
EXIT_CONFIG = 2  # settings or arguments invalid; nothing was attempted


def settings_or_exit() -> Settings:
    """Settings, or every configuration problem printed and exit EXIT_CONFIG."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))
