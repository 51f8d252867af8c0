"""The settings every `ukcancel` subcommand starts from: read once from the environment, errors as usage errors."""

from __future__ import annotations

import click

from ukcancel.settings import Settings, SettingsError


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(f"configuration error: {exc}") from None
