"""coexist's one configuration: every setting, typed, from one place.

``Settings.from_env()`` reads, highest priority first:

1. the process environment (``COEXIST_*``; an empty value counts as unset);
2. the env file named by ``COEXIST_ENV_FILE`` (dotenv syntax: ``KEY=VALUE``,
   ``export KEY=VALUE``, quotes, inline ``# comments``), how supervisord programs
   get their settings and credentials without putting them on a command line;
3. the TOML file named by ``COEXIST_CONFIG`` (default ``$COEXIST_HOME/coexist.toml``
   when that file exists) for the structured sections: today ``[subscriptions.NAME]``;
4. the embedded defaults: with nothing configured a single machine runs with no
   RabbitMQ, Redis or PostgreSQL (state and the legacy ERP in SQLite files under
   ``COEXIST_HOME``, the embedded SQLite broker, flags in SQLite).

Sections today: ``[subscriptions.NAME]`` (which channel consumes which domains),
``[[edi.partners]]`` (the EDI trading partners) and ``[crm]`` (the CRM of the ``crm``
channel; its OAuth secret is ``COEXIST_CRM_CLIENT_SECRET``, never in the file).

Scalar settings are environment variables (``COEXIST_`` + the field name in upper
case).  A **section** is a field whose value is a pydantic model (or a table of
them) and is read from the TOML file under the field's name; a channel adds its
settings by adding one such field here (``crm: CrmSection | None = None``).

Anything wrong is a ``ConfigError`` naming the variable (or TOML key), where it came
from and what is expected.  Credentials are ``SecretStr`` and URLs are shown through
``redact_url``: no password reaches a log line or ``coexist config show``.
"""

from __future__ import annotations

import io
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from coexistence.canonical import DOMAINS
from coexistence.edi.profiles import EdiSettings
from workers.router.queues import KIND_DELETE, KIND_EVENT

ENV_PREFIX = "COEXIST_"
#: The envelope kinds a channel subscription can receive from the router's fan-out.
SUBSCRIPTION_KINDS: tuple[str, ...] = (KIND_EVENT, KIND_DELETE)
_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ConfigError(ValueError):
    """A setting that is missing, malformed or contradictory; the message names it."""


class CrmSection(BaseModel):
    """``[crm]``: the CRM the ``crm`` channel keeps in sync (Salesforce REST or the CRM
    simulator).  The OAuth client's secret is not here: ``COEXIST_CRM_CLIENT_SECRET``
    (environment or env file) only, so it is never in a file people share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The CRM's login URL (``https://login.salesforce.com``, the simulator's URL).
    url: str
    #: The OAuth client (connected app) coexist logs in as (client-credentials flow).
    client_id: str = Field(min_length=1)
    #: Salesforce REST API version (sObject Collections upsert needs 46.0 or later).
    api_version: str = "60.0"
    #: Percent of the daily API budget left to the people using the CRM: the channel
    #: pauses once the rest is used.
    budget_reserve_pct: float = Field(2.0, ge=0, lt=100)
    #: From this percent of the budget used, every request waits first (slows down).
    budget_slow_pct: float = Field(90.0, ge=0, le=100)
    #: Seconds between two reads of the CRM's change feed (people's edits, new accounts).
    poll_interval_s: float = Field(5.0, gt=0, le=3600)
    #: Seconds a paused channel waits before it tries the CRM again.
    pause_s: float = Field(60.0, gt=0, le=86_400)
    #: Per-request timeout, in seconds.
    timeout_s: float = Field(30.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"\d{2,3}\.0", value) or float(value) < 46:
            raise ValueError("must be a Salesforce API version like 60.0, at least 46.0 "
                             "(sObject Collections upsert)")
        return value

    @model_validator(mode="after")
    def _slow_before_pause(self) -> CrmSection:
        if self.budget_slow_pct > 100 - self.budget_reserve_pct:
            raise ValueError(f"budget_slow_pct {self.budget_slow_pct:g} is beyond the pause "
                             f"at {100 - self.budget_reserve_pct:g}% (100 - budget_reserve_pct)")
        return self


class SubscriptionSection(BaseModel):
    """``[subscriptions.NAME]``: channel NAME receives these domains' canonical events
    (``coexist.channel.NAME``), from the system of record only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Business domains whose changes the channel receives.
    domains: tuple[str, ...]
    #: Which of the router's fan-out kinds: ``event`` (a record as it is now),
    #: ``delete`` (a record that is gone).
    kinds: tuple[str, ...] = SUBSCRIPTION_KINDS

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one domain")
        for domain in value:
            if domain not in DOMAINS:
                raise ValueError(f"{domain!r} is not a domain (one of {', '.join(DOMAINS)})")
        return tuple(dict.fromkeys(value))

    @field_validator("kinds")
    @classmethod
    def _some_kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"must name at least one kind ({', '.join(SUBSCRIPTION_KINDS)})")
        for kind in value:
            if kind not in SUBSCRIPTION_KINDS:
                raise ValueError(f"{kind!r} is not a kind (one of "
                                 f"{', '.join(SUBSCRIPTION_KINDS)})")
        return tuple(dict.fromkeys(value))


# Sources beyond the init arguments, set only while ``Settings.from_env`` runs: a
# ``Settings(...)`` built in code (tests, the demo) reads nothing from the environment.
_LOADING: ContextVar[tuple[Mapping[str, Any], ...] | None] = ContextVar("_LOADING",
                                                                        default=None)


class Settings(BaseSettings):
    """Every setting of coexist.  Build with ``Settings.from_env()``; in code and tests
    ``Settings(home=..., ...)`` takes the given values and the defaults, nothing else."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
                                      frozen=True, extra="forbid", validate_default=True)

    #: Folder for the embedded default's files (SQLite databases, the demo's files).
    home: Path = Path("var")
    #: coexist's own state (xref, outbox, inbox, audit, exceptions); PostgreSQL in production.
    state_url: str = ""
    #: The legacy ERP's database.
    legacy_url: str = ""
    #: AMQP URL for RabbitMQ (a cluster: its nodes' URLs, comma-separated); unset selects
    #: the embedded SQLite broker.
    broker_url: str | None = None
    #: ``classic`` on one node, ``quorum`` for a RabbitMQ cluster.
    queue_type: Literal["classic", "quorum"] = "classic"
    #: Embedded broker: seconds a message a worker took stays invisible to the others
    #: without renewal; a worker killed mid-message hands it back after at most this long.
    bus_lease_s: float = Field(30.0, ge=1, le=3600)
    #: Most routed writes an ERP writer takes per batch (one read and one write request
    #: each); 1 consumes them one message at a time (the path every decision takes).
    write_batch_size: int = Field(200, ge=1, le=200)
    #: RabbitMQ management API for ``status``'s queue view (default: derived from the
    #: broker URL, port 15672); ``off`` reads queues by passive declares only.
    broker_management_url: str | None = None
    #: Redis URL; unset keeps flags in SQL and rate limits in-process.
    redis_url: str | None = None
    #: Key prefix for everything coexist stores in Redis.
    redis_prefix: str = "coexist:"
    #: Base URL of the cloud ERP API.
    cloud_url: str | None = None
    #: Bearer token for the cloud ERP API.
    cloud_token: SecretStr | None = None
    #: Requests per second coexist allows itself against the cloud ERP (0: unlimited).
    cloud_rate_per_s: float = Field(0.0, ge=0)
    #: Token bucket size of that rate limit (default: one second's worth).
    cloud_burst: float = Field(0.0, ge=0)
    #: HTTP attempts per cloud ERP request (1: no in-call retry); inside a message they
    #: also spend from its retry budget and stop at its delivery deadline.
    cloud_retry_attempts: int = Field(6, ge=1, le=20)
    # The retry budget of one message across layers (``bus.budget``, ``bus.retry``; see
    # docs/architecture.md "Which layer retries what").
    #: Failed attempts one message may spend in all, over its deliveries: each failed
    #: HTTP attempt counts, and each delivery that failed without one; then it is
    #: recorded as a technical exception with its attempt history.
    retry_budget: int = Field(24, ge=1, le=1000)
    #: Re-deliveries of a message after a technical failure (the bus's retries).
    retry_max_retries: int = Field(8, ge=0, le=100)
    #: The bus's backoff before the first retry, doubling up to the cap (jittered).
    retry_min_backoff_s: float = Field(15.0, gt=0, le=1800)
    #: Longest wait between two deliveries; kept below RabbitMQ's ``consumer_timeout``
    #: (30 min), since a waiting retry is an unacked delivery.
    retry_max_backoff_s: float = Field(600.0, gt=0, le=1800)
    #: Seconds one delivery may spend on in-call retries; then it fails and the bus
    #: retries it later (a worker thread is not held by an outage).
    retry_delivery_s: float = Field(30.0, gt=0, le=3600)
    #: Who changes flags and replays exceptions (``--actor`` wins; else ``USER``).
    actor: str | None = None
    #: The login name, the actor's last fallback.
    user: str | None = Field(None, validation_alias="USER")
    #: Freeze windows ``START/END[,START/END...]`` (ISO 8601 with a time zone).
    freeze: str | None = None
    #: Largest acceptable reconciliation drift in percent of records: ``reconcile``'s exit
    #: code, the cutover drift guard and ``status`` all judge drift by it.
    max_drift_pct: float = Field(0.1, ge=0, le=100)
    #: Largest backlog of a domain for a forward move: routed messages not yet applied,
    #: refused or recorded by a consumer (in the outbox or the broker; ``bus.ledger``).
    cutover_max_backlog: int = Field(0, ge=0)
    #: Seconds within which the last reconciliation counts for the drift guard even if a
    #: change of the domain was routed after it started (older: it must have started after).
    max_reconcile_age_s: float = Field(900.0, ge=0)
    #: Bearer tokens the cloud simulator accepts, ``client:token,client:token``.
    sim_tokens: SecretStr | None = None
    #: OAuth clients the CRM simulator accepts, ``client_id:secret,...`` (unset: any client).
    crm_sim_clients: SecretStr | None = None
    #: The OAuth client secret coexist logs in to the CRM with (the ``[crm]`` section's
    #: ``client_id``); environment or env file only.
    crm_client_secret: SecretStr | None = Field(None, repr=False)
    #: Show tracebacks for errors (also ``coexist --debug``).
    debug: bool = False

    # The governed API (``coexist api serve``); unset means the API's own default
    # (``workers.api.deps``), so each default is defined once, where it is used.
    #: The consumers JSON file (token hashes, roles, accounts).
    api_consumers: str | None = None
    #: Seconds an inquiry answer is reused.
    api_cache_ttl_s: float | None = Field(None, ge=0)
    #: On a SoR outage, serve a cached answer (marked stale) up to ``api_stale_max_s`` old.
    api_serve_stale: bool = False
    api_stale_max_s: float | None = Field(None, ge=0)
    #: Retry-After of a 503, in seconds.
    api_retry_after_s: int | None = Field(None, ge=0)
    #: Portal order numbers start above it.
    api_order_number_base: int | None = Field(None, ge=0)
    #: Seconds Idempotency-Keys are kept (at least a day).
    api_idempotency_ttl_s: float | None = Field(None, ge=0)
    #: Default rate limit of an API consumer (requests/s, and the burst it may save up);
    #: a consumer's own ``rate_per_s``/``burst`` in the consumers file wins.
    api_rate_per_s: float | None = Field(None, gt=0)
    api_rate_burst: int | None = Field(None, ge=1)
    #: Inquiry trace (``coexist trace``): share of inquiries considered, most recorded per
    #: second per API process, and hours they are kept.
    api_trace_sample: float | None = Field(None, ge=0, le=1)
    api_trace_max_per_s: float | None = Field(None, ge=0)
    api_trace_retention_h: float | None = Field(None, gt=0)
    #: The cutover console's token (``coexist console``): required when it is bound to an
    #: address other than loopback; sent as a bearer token or basic-auth password.
    console_token: SecretStr | None = None

    # The EDI channel (``workers.edi.consumer``; partner profiles are ``[[edi.partners]]``).
    #: Seconds between two polls of the partners' ``inbound/`` folders (and of outbound
    #: files still to write) by ``coexist run`` and a worker that runs the edi channel.
    edi_poll_s: float = Field(5.0, gt=0)
    #: A claimed inbound file whose worker has not finished it after this many seconds
    #: (the worker died) is taken over by another poll.
    edi_claim_timeout_s: float = Field(300.0, gt=0)

    # ------------------------------------------------------------------ sections

    #: ``[subscriptions.NAME]``: which channel consumes which domains and kinds.
    subscriptions: dict[str, SubscriptionSection] = Field(default_factory=dict)
    #: ``[[edi.partners]]``: the EDI trading partners (``coexistence.edi.profiles``).
    edi: EdiSettings | None = None
    #: ``[crm]``: the CRM of the ``crm`` channel (its secret: ``COEXIST_CRM_CLIENT_SECRET``).
    crm: CrmSection | None = None

    # ------------------------------------------------------------------ where from

    #: The env file and TOML file this configuration was read from (for ``config show``).
    _env_file: Path | None = PrivateAttr(None)
    _config_file: Path | None = PrivateAttr(None)
    #: Field name -> where its value came from (environment, env file, TOML, default).
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        extra = _LOADING.get()
        if extra is None:
            return (init_settings,)
        return (init_settings, *(InitSettingsSource(settings_cls, dict(d)) for d in extra))

    # ------------------------------------------------------------------ validation

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("freeze")
    @classmethod
    def _valid_freeze(cls, value: str | None) -> str | None:
        from coexistence.flags import FlagError
        from coexistence.preflight import parse_freeze_windows

        try:
            parse_freeze_windows(value, source="COEXIST_FREEZE")
        except FlagError as exc:
            raise ValueError(str(exc).removeprefix("COEXIST_FREEZE: ")) from None
        return value

    @field_validator("state_url", "legacy_url")
    @classmethod
    def _psycopg(cls, value: str) -> str:
        # psycopg 3 is the PostgreSQL driver coexist ships; SQLAlchemy's bare
        # postgresql:// would look for psycopg2.
        if value.startswith("postgresql://"):
            return "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _amqp(cls, value: str | None) -> str | None:
        from bus.brokers.rabbitmq import split_broker_urls

        if value:
            try:
                split_broker_urls(value)
            except ValueError as exc:
                raise ValueError(f"{exc} (one amqp:// URL, or a cluster's nodes "
                                 "comma-separated; unset for the embedded broker)") from None
        return value

    @field_validator("cloud_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("subscriptions")
    @classmethod
    def _channel_names(cls, value: dict[str, SubscriptionSection]):
        for name in value:
            if not _CHANNEL_NAME.match(name):
                raise ValueError(f"channel name {name!r} must be lower-case letters, digits "
                                 "and _, starting with a letter (it names a queue)")
        return value

    @field_validator("crm")
    @classmethod
    def _crm_secret(cls, value: CrmSection | None, info) -> CrmSection | None:
        secret = info.data.get("crm_client_secret")
        if value is not None and (secret is None or not secret.get_secret_value()):
            raise ValueError("COEXIST_CRM_CLIENT_SECRET is not set: the CRM's OAuth client "
                             f"{value.client_id!r} needs its secret (environment or "
                             "COEXIST_ENV_FILE, never the TOML file)")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.retry_min_backoff_s > self.retry_max_backoff_s:
            raise ValueError(f"COEXIST_RETRY_MIN_BACKOFF_S {self.retry_min_backoff_s:g} is "
                             f"above COEXIST_RETRY_MAX_BACKOFF_S {self.retry_max_backoff_s:g}")
        return self

    def retry_options(self) -> dict[str, Any]:
        """The failure middleware's policy (``bus.retry.FailureClasses``) as configured."""
        return {"max_retries": self.retry_max_retries,
                "min_backoff_ms": int(self.retry_min_backoff_s * 1000),
                "max_backoff_ms": int(self.retry_max_backoff_s * 1000),
                "budget": self.retry_budget, "delivery_s": self.retry_delivery_s}

    @model_validator(mode="after")
    def _derived_urls(self) -> Settings:
        # Frozen model: fill the defaults that depend on ``home`` once, at validation.
        if not self.state_url:
            self.__dict__["state_url"] = f"sqlite:///{self.home / 'state.db'}"
        if not self.legacy_url:
            self.__dict__["legacy_url"] = f"sqlite:///{self.home / 'legacy.db'}"
        return self

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The configuration of this process (see the module docstring); ``ConfigError``
        naming the setting when something is wrong."""
        environ = os.environ if environ is None else environ
        env = {k: v for k, v in environ.items() if v != ""}
        env_file = _path_setting(env, "COEXIST_ENV_FILE")
        file_values: dict[str, str] = {}
        if env_file is not None:
            file_values = read_env_file(env_file)
        merged = {**file_values, **env}
        config_file = _path_setting(merged, "COEXIST_CONFIG")
        explicit_config = config_file is not None
        if config_file is None:
            home = Path(merged.get("COEXIST_HOME", "var")).expanduser().resolve()
            config_file = home / "coexist.toml"
        toml_values = read_toml(config_file, required=explicit_config)
        if not toml_values and not explicit_config:
            config_file = None

        env_names = env_names_of(cls)
        from_file = {field: file_values[name] for field, name in env_names.items()
                     if name in file_values and name not in env}
        unknown = sorted(k for k in file_values if k.startswith(ENV_PREFIX)
                         and k not in env_names.values() and k not in _LOADER_VARIABLES)
        if unknown:
            raise ConfigError(f"COEXIST_ENV_FILE {env_file}: {', '.join(unknown)} "
                              f"{'is not a' if len(unknown) == 1 else 'are not'} coexist "
                              "setting(s) (see `coexist config show`)")
        # Other variables of the env file reach the process environment, as a shell's
        # `source` would (PGSSLROOTCERT and the like); the environment wins.
        for key, value in file_values.items():
            if not key.startswith(ENV_PREFIX) and key not in env_names.values():
                os.environ.setdefault(key, value)

        origins = {field: "default" for field in cls.model_fields}
        for field, name in env_names.items():
            if name in env:
                origins[field] = "environment"
            elif name in file_values:
                origins[field] = f"env file {env_file}"
        for field in toml_values:
            origins[field] = f"TOML {config_file}"
        from_env = {field: env[name] for field, name in env_names.items() if name in env}
        token = _LOADING.set((from_env, from_file, toml_values))
        try:
            settings = cls()
        except ValidationError as exc:
            raise ConfigError(explain_validation(exc, env_names, origins)) from None
        finally:
            _LOADING.reset(token)
        settings._env_file, settings._config_file = env_file, config_file
        settings._origins = origins
        return settings

    # ------------------------------------------------------------------ helpers

    def ensure_home(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home

    @property
    def bus_path(self) -> Path:
        """The embedded broker's SQLite file."""
        return self.home / "bus.db"

    @cached_property
    def freeze_windows(self):
        from coexistence.preflight import parse_freeze_windows

        return parse_freeze_windows(self.freeze, source="COEXIST_FREEZE")

    def cloud_token_value(self) -> str | None:
        return self.cloud_token.get_secret_value() if self.cloud_token else None

    def actor_for(self, explicit: str | None = None) -> str | None:
        """Who is acting: ``--actor``, else ``COEXIST_ACTOR``, else ``USER``."""
        actor = (explicit or self.actor or self.user or "").strip()
        return actor or None

    def sim_token_map(self) -> dict[str, str]:
        """``COEXIST_SIM_TOKENS`` as token -> client id."""
        raw = self.sim_tokens.get_secret_value() if self.sim_tokens else ""
        tokens: dict[str, str] = {}
        for i, pair in enumerate(p for p in raw.split(",") if p.strip()):
            client, sep, token = pair.strip().partition(":")
            if not sep or not client or not token:
                raise ConfigError(f"COEXIST_SIM_TOKENS entry {i + 1} is not client:token")
            tokens[token] = client
        return tokens

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value with credentials hidden, origin) of every setting, for people."""
        names = env_names_of(type(self))
        rows = [("COEXIST_ENV_FILE", str(self._env_file or "-"),
                 "environment" if self._env_file else "default"),
                ("COEXIST_CONFIG", str(self._config_file or "-"),
                 "read" if self._config_file else "none")]
        for field in type(self).model_fields:
            value = getattr(self, field)
            name = names.get(field, f"[{field}]")
            rows.append((name, _shown(value), self._origins.get(field, "default")))
        return rows

    @property
    def config_file(self) -> Path | None:
        """The TOML file the sections were read from, if any."""
        return self._config_file


#: Variables read by ``from_env`` itself rather than by a field.
_LOADER_VARIABLES = frozenset({"COEXIST_ENV_FILE", "COEXIST_CONFIG"})


def env_names_of(cls: type[Settings]) -> dict[str, str]:
    """Field name -> environment variable, for every scalar setting (not the sections)."""
    out = {}
    for name, info in cls.model_fields.items():
        if is_section(info.annotation):
            continue
        alias = info.validation_alias
        out[name] = alias if isinstance(alias, str) else ENV_PREFIX + name.upper()
    return out


def is_section(annotation: Any) -> bool:
    """A field read from the TOML file: a pydantic model, a table of them, or an optional one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(is_section(arg) for arg in get_args(annotation))


def _path_setting(values: Mapping[str, str], name: str) -> Path | None:
    raw = values.get(name)
    return Path(raw).expanduser() if raw else None


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of a dotenv file; ``ConfigError`` naming the file (and line) when it
    is missing, unreadable or malformed (see ``parse_env``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"COEXIST_ENV_FILE {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"COEXIST_ENV_FILE {path}: cannot read it: {reason}") from None
    return parse_env(text, str(path))


def parse_env(text: str, source: str) -> dict[str, str]:
    """Variables of dotenv text (python-dotenv's parser: ``[export] KEY=VALUE``, quotes,
    inline ``# comments``, blank lines); a line that is none of these is a ``ConfigError``
    naming ``source`` and the line."""
    from dotenv.parser import parse_stream

    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            snippet = (binding.original.string.strip().splitlines() or [""])[0][:60]
            raise ConfigError(f"COEXIST_ENV_FILE {source} line {line}: expected KEY=VALUE, "
                              f"got {_redact_text(snippet)!r}")
        if binding.key is None:
            continue  # blank line or comment
        if binding.value is None:
            raise ConfigError(f"COEXIST_ENV_FILE {source} line {line}: {binding.key} has no "
                              f"value (write {binding.key}=VALUE)")
        values[binding.key] = binding.value
    return values


def read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    """The sections of the TOML configuration file (``{}`` when absent and not required)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"COEXIST_CONFIG {path}: no such file") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"COEXIST_CONFIG {path}: cannot read it: {reason}") from None
    return parse_toml(text, str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """The sections of TOML text; unknown sections and bad TOML name ``source``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"COEXIST_CONFIG {source}: not valid TOML: {exc}") from None
    sections = [n for n, info in Settings.model_fields.items() if is_section(info.annotation)]
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"COEXIST_CONFIG {source}: unknown section(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sections)}; scalar settings are environment "
                          "variables)")
    return data


def explain_validation(exc: ValidationError, env_names: Mapping[str, str],
                       origins: Mapping[str, str]) -> str:
    """One line per problem, naming the variable or TOML key and where it was set."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = loc[0] if loc else "?"
        name = env_names.get(field)
        if name is None:
            # A section: its TOML path, e.g. subscriptions.crm.domains[1]
            name = field + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc[1:])
        where = origins.get(field, "default")
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or field in _SECRET_FIELDS else (
            f"={_redact_text(str(value))!r}")
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            message = message.replace("Input should be", "must be")
        lines.append(f"{name}{shown} ({where}): {message}")
    return "; ".join(lines)


_SECRET_FIELDS = frozenset({"cloud_token", "sim_tokens", "crm_sim_clients",
                            "crm_client_secret"})


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else "-"
    if isinstance(value, dict):
        if not value:
            return "-"
        return "; ".join(f"{k}: {_shown(v)}" for k, v in value.items())
    if isinstance(value, BaseModel):
        return ", ".join(f"{k}={'/'.join(v) if isinstance(v, tuple) else v}"
                         for k, v in value.model_dump().items())
    text = str(value)
    return redact_url(text) if "://" in text else text


_USERINFO = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")


def _redact_text(text: str) -> str:
    return _USERINFO.sub(r"\1:***@", text)


def redact_url(url: str | None) -> str:
    """A URL safe to log: the password is replaced by ``***`` (also in malformed URLs)."""
    if not url:
        return "-"
    if url.count("://") > 1:  # a cluster's nodes (COEXIST_BROKER_URL): every password
        return _redact_text(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _redact_text(url)
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
