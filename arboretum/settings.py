"""Node settings: keyword arguments, then ``ARBORETUM_*`` variables, then ``arboretum.toml``.

``arboretum.Settings`` (loaded lazily: ``import arboretum`` does not import this module).
Every value is validated; a bad one raises :class:`~arboretum.ValidationError` whose
``.errors`` is keyed by the setting's name and says what is accepted (and where the bad value
came from). See docs/node.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._core._exceptions import ValidationError

__all__ = ["DEFAULT_WEB", "ENV_PREFIX", "Settings", "local_timezone_name"]

ENV_PREFIX: Final = "ARBORETUM_"
DEFAULT_WEB: Final = ("127.0.0.1", 4000)
_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOOPBACK_NAMES: Final = ("localhost",)


def local_timezone_name() -> str:
    """The machine's IANA timezone name (``TZ``, then ``/etc/localtime``), else ``"UTC"``."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and _zone(tz) is not None:
        return tz
    try:
        target = os.path.realpath("/etc/localtime")
    except OSError:  # pragma: no cover
        return "UTC"
    marker = "zoneinfo" + os.sep
    if marker in target:
        name = target.split(marker, 1)[1]
        if _zone(name) is not None:
            return name
    return "UTC"


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def system_wall_clock() -> datetime:
    """The default wall clock: the system clock, as an aware UTC datetime."""
    return datetime.now(UTC)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a node, validated. Build with ``Settings(**fields)`` (defaults for
    the rest) or :meth:`load` (keyword arguments, then environment, then a TOML file).

    Attributes:
        database: the SQLite file (or URL) of the store.
        allow: module patterns for ``module:function`` abilities (see docs/abilities.md).
        timezone: IANA name of the zone cron schedules are read in (default: the machine's).
        flap_max_restarts: crashes tolerated within ``flap_window_s`` before an agent is
            disabled (the next one disables it).
        flap_window_s: the flap detection window, seconds.
        restart_backoff_initial_s: the delay before an agent's first restart after a crash.
        restart_backoff_max_s: the cap of the (doubling) restart delay.
        shutdown_grace_s: how long an agent's ``terminate`` may take when it stops.
        poll_interval_s: how often the change feed looks for other processes' writes.
        web: ``(host, port)`` the dashboard and API listen on, or ``None`` for none.
        allow_remote: allow ``web`` on a host other than loopback.
        log_level: ``DEBUG`` ... ``CRITICAL``, for the ``arboretum`` loggers.
        run_history: runs kept per agent.
        store_threads: run database calls in worker threads (the default); ``False`` runs
            them on the trio thread, for tests under trio's virtual clock (code only).
        wall_clock: zero-argument callable returning an aware datetime (code only).
    """

    database: str = "arboretum.db"
    allow: tuple[str, ...] = ()
    timezone: str = field(default_factory=local_timezone_name)
    flap_max_restarts: int = 5
    flap_window_s: float = 60.0
    restart_backoff_initial_s: float = 0.1
    restart_backoff_max_s: float = 30.0
    shutdown_grace_s: float = 5.0
    poll_interval_s: float = 0.2
    web: tuple[str, int] | None = None
    allow_remote: bool = False
    log_level: str = "INFO"
    run_history: int = 200
    store_threads: bool = True
    wall_clock: Callable[[], datetime] = system_wall_clock

    def __post_init__(self) -> None:
        errors: dict[str, list[str]] = {}
        for f in dataclasses.fields(self):
            try:
                value = _CHECKS[f.name](getattr(self, f.name))
            except _Bad as bad:
                errors[f.name] = [str(bad)]
            else:
                object.__setattr__(self, f.name, value)
        if not errors and self.restart_backoff_max_s < self.restart_backoff_initial_s:
            errors["restart_backoff_max_s"] = [
                f"must be at least restart_backoff_initial_s ({self.restart_backoff_initial_s:g})"
            ]
        if not errors and self.web is not None and not self.allow_remote:
            if not is_loopback(self.web[0]):
                errors["web"] = [
                    f"host {self.web[0]!r} is not a loopback address: the node would be "
                    "reachable from other machines; set allow_remote (--allow-remote) to "
                    "allow that, or use 127.0.0.1"
                ]
        if errors:
            raise ValidationError(errors)

    @property
    def tzinfo(self) -> ZoneInfo:
        """:attr:`timezone` as a ``ZoneInfo``."""
        return ZoneInfo(self.timezone)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated; unknown names refused)."""
        _refuse_unknown(changes, "")
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        config: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``overrides``, then ``ARBORETUM_*`` variables, then a TOML file.

        Args:
            config: the TOML file (top-level keys are setting names). ``None``: the file
                ``arboretum.toml`` in the working directory, if there is one.
            environ: the environment to read (default ``os.environ``).
            **overrides: settings given in code; they win over everything else.

        Raises:
            ValidationError: a bad value (keyed by setting name, saying where it came from),
                an unknown setting, or a TOML file that cannot be read.
        """
        values: dict[str, Any] = {}
        values.update(_from_toml(config))
        values.update(_from_env(os.environ if environ is None else environ))
        _refuse_unknown(overrides, "")
        values.update(overrides)
        return cls(**values)


# -- checks ------------------------------------------------------------------------------------


class _Bad(Exception):
    pass


def _number(low: float, high: float, what: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value
        ):
            raise _Bad(f"must be a number of {what} from {low:g} to {high:g}; got {value!r}")
        if not low <= value <= high:
            raise _Bad(f"must be from {low:g} to {high:g} {what}; got {value!r}")
        return float(value)

    return check


def _positive_number(high: float, what: str) -> Callable[[Any], float]:
    inner = _number(0, high, what)

    def check(value: Any) -> float:
        result = inner(value)
        if result <= 0:
            raise _Bad(f"must be more than 0 {what}; got {value!r}")
        return result

    return check


def _int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Bad(f"must be a whole number from {low} to {high}; got {value!r}")
        return value

    return check


def _database(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise _Bad(f"must be the path of an SQLite file (or a database URL); got {value!r}")
    return value


def _allow(value: Any) -> tuple[str, ...]:
    from .abilities import Abilities

    if isinstance(value, str):
        value = [p for p in (part.strip() for part in value.split(",")) if p]
    if not isinstance(value, list | tuple):
        raise _Bad(f"must be a list of module patterns like 'my_pkg.tools.*'; got {value!r}")
    try:
        return Abilities(value, entry_points=False).allow
    except ValidationError as exc:
        raise _Bad("; ".join(exc.errors.get("allow", ["bad pattern"]))) from None


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value or _zone(value) is None:
        raise _Bad(
            f"must be an IANA timezone name such as 'Europe/Berlin' or 'UTC'; got {value!r}"
        )
    return value


def _web(value: Any) -> tuple[str, int] | None:
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_WEB
    if isinstance(value, str):
        if value.strip().lower() in ("off", "none", "false", "no", ""):
            return None
        host, sep, port_text = value.strip().rpartition(":")
        if not sep:
            raise _Bad(f"must be 'HOST:PORT' (e.g. '127.0.0.1:4000') or 'off'; got {value!r}")
        try:
            value = (host.strip("[]"), int(port_text))
        except ValueError:
            raise _Bad(f"the port of {value!r} is not a number") from None
    if isinstance(value, Mapping):
        value = (value.get("host", DEFAULT_WEB[0]), value.get("port", DEFAULT_WEB[1]))
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise _Bad(f"must be (host, port), 'HOST:PORT', or None; got {value!r}")
    host, port = value
    if not isinstance(host, str) or not host or len(host) > 255:
        raise _Bad(f"the host must be a name or address; got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _Bad(f"the port must be a whole number from 0 (any free port) to 65535; got {port!r}")
    return (host, port)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false; got {value!r}")
    return value


def _log_level(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in _LOG_LEVELS:
        raise _Bad(f"must be one of {', '.join(_LOG_LEVELS)}; got {value!r}")
    return value.upper()


def _wall_clock(value: Any) -> Callable[[], datetime]:
    if not callable(value):
        raise _Bad(f"must be a zero-argument callable returning an aware datetime; got {value!r}")
    return value  # type: ignore[no-any-return]


_CHECKS: Final[dict[str, Callable[[Any], Any]]] = {
    "database": _database,
    "allow": _allow,
    "timezone": _timezone,
    "flap_max_restarts": _int(0, 1_000_000),
    "flap_window_s": _positive_number(86_400 * 365, "seconds"),
    "restart_backoff_initial_s": _number(0, 86_400, "seconds"),
    "restart_backoff_max_s": _number(0, 86_400, "seconds"),
    "shutdown_grace_s": _number(0, 86_400, "seconds"),
    "poll_interval_s": _number(0.01, 86_400, "seconds"),
    "web": _web,
    "allow_remote": _bool,
    "log_level": _log_level,
    "run_history": _int(1, 1_000_000),
    "store_threads": _bool,
    "wall_clock": _wall_clock,
}

_CODE_ONLY: Final = frozenset({"wall_clock", "store_threads"})


def _refuse_unknown(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(_CHECKS))
    if unknown:
        accepted = ", ".join(sorted(set(_CHECKS) - (_CODE_ONLY if where else set())))
        raise ValidationError({
            name: [f"unknown setting{where}; accepted settings are: {accepted}"]
            for name in unknown
        })


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name in _CHECKS:
        if name in _CODE_ONLY:
            continue
        var = ENV_PREFIX + name.upper()
        if var not in environ:
            continue
        text = environ[var]
        try:
            values[name] = _parse_env(name, text)
        except _Bad as bad:
            errors[name] = [f"{bad} (from {var}={text!r})"]
    if errors:
        raise ValidationError(errors)
    return values


def _parse_env(name: str, text: str) -> Any:
    default = {f.name: f for f in dataclasses.fields(Settings)}[name]
    kind = default.type
    text = text.strip()
    if kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise _Bad(f"must be true or false (1/0, yes/no); got {text!r}")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise _Bad(f"must be a whole number; got {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise _Bad(f"must be a number; got {text!r}") from None
    return text  # str, patterns (comma-separated), web ("HOST:PORT" / "off")


def _from_toml(config: str | os.PathLike[str] | None) -> dict[str, Any]:
    if config is None:
        default = Path("arboretum.toml")
        if not default.is_file():
            return {}
        path = default
    else:
        path = Path(config)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValidationError({"config": [f"no such settings file: {str(path)!r}"]}) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError({"config": [f"cannot read {str(path)!r}: {exc}"]}) from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError({"config": [f"{str(path)!r} is not valid TOML: {exc}"]}) from None
    _refuse_unknown(data, f" in {path}")
    if "allow" in data and isinstance(data["allow"], list):
        data["allow"] = tuple(data["allow"])
    return data
