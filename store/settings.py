"""Every `MTP_*` environment variable, typed and documented in one place (README, "Settings").

`settings()` reads the environment each time it is called: the entry points change it for the
engines they start (`--db` becomes `MTP_DB_URL`, `--demo` drops it), and tests set variables
between calls. Reading is cheap next to what each caller then does (open a database, start a
process). `check_settings()` is called once by each entry point so a bad value is one clear line
at start, never a traceback deep inside the engine.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import SettingsError

ENV_PREFIX = "MTP_"


class Settings(BaseSettings):
    """mtp's environment. Field `x` is the variable `MTP_X`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    home: Path | None = Field(
        None, description="the data folder (default: the platform's user data folder)"
    )
    db_url: str | None = Field(
        None,
        description="database URL, e.g. postgresql+psycopg://lab@dbhost/mtp "
        "(default: the SQLite file in the data folder); `--db` sets it for the engines started",
    )
    shared_group: bool = Field(
        False,
        description="1: share the data folder with its group (2770/0660) instead of 0700/0600",
    )
    engine_backend: str | None = Field(
        None,
        description="`mtp-engine --backend` for engines started by other tools: diffusers or fake",
    )
    dreamsim_dir: Path | None = Field(
        None, description="DreamSim weights folder (default: <data folder>/models/dreamsim)"
    )
    image: str = Field(
        "auto", description="how the app draws images: auto, halfcell, unicode, sixel or tgp"
    )
    fault: str = Field(
        "",
        description="fault drills: enospc:FLAG, erofs:FLAG, eacces:FLAG (artifact writes fail while "
        "FLAG exists) or kill-after-write:P",
    )
    fake_step_s: float = Field(0.0, ge=0, description="fake backend: seconds per denoising step")
    fake_log: Path | None = Field(
        None, description="fake backend: a file that gets a line per batch"
    )
    fake_crash_prompt: str | None = Field(
        None, description="fake backend: a target prompt that kills the engine"
    )
    clock_offset_s: float = Field(
        0.0,
        description="tests: shift this process's clock by that many seconds (a wrong host clock)",
    )
    oracle_storydiffusion: Path | None = Field(
        None, description="tests: a checkout of HVision-NKU/StoryDiffusion to compare against"
    )
    oracle_consistory: Path | None = Field(
        None, description="tests: a checkout of NVlabs/consistory to compare against"
    )
    test_pg_url: str | None = Field(
        None, description="tests: an existing PostgreSQL server instead of a throwaway one"
    )

    @field_validator("shared_group", mode="before")
    @classmethod
    def _loose_bool(cls, value: object) -> object:
        # The variable predates this object and accepted any non-false word as true.
        if isinstance(value, str):
            return value.strip().lower() not in ("", "0", "no", "false", "off")
        return value

    @field_validator("image", "engine_backend", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("home", "dreamsim_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


def settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None


def check_settings() -> Settings:
    """The entry points' start check: the settings, or a SettingsError that names the variable."""
    return settings()


def _explain(exc: ValidationError) -> str:
    first = exc.errors()[0]
    name = ENV_PREFIX + str(first["loc"][0]).upper() if first.get("loc") else "an MTP_ variable"
    return f"{name}: {first['msg']} (got {first.get('input')!r})"


def documented() -> list[tuple[str, str]]:
    """(variable, description) for README's table; a test keeps README in step with it."""
    return [
        (ENV_PREFIX + name.upper(), field.description or "")
        for name, field in Settings.model_fields.items()
    ]
