"""Where a tuning study lives: an Optuna RDB storage, by default a SQLite file in the study folder.

Any SQLAlchemy URL Optuna accepts works (`postgresql://user@host/db` with the `postgres` extra,
`mysql+pymysql://...`), so processes on several machines can share one study. The storage is
opened, and its tables created, before anything else happens: an unreachable server, a missing
driver or a malformed URL is a one-line error with nothing started.

Trials send a heartbeat every `HEARTBEAT_SECONDS`; a trial silent for `GRACE_SECONDS` (its
machine died and no shared folder shows its lock) is failed by the next process that looks, and
`on_stale` re-enqueues it.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

from compactcnn.errors import UserError

DEFAULT_FILE = "optuna.db"
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 300
# Seconds a SQLite writer waits for another process's write lock before failing: trials are
# minutes long, so a few seconds of waiting beats a "database is locked" crash.
SQLITE_TIMEOUT_SECONDS = 60
CONNECT_TIMEOUT_SECONDS = 10
# Two processes starting on a new database may race to create its tables.
OPEN_ATTEMPTS = 3


def default_url(tune_dir: Path) -> str:
    """The SQLite file `<tune_dir>/optuna.db` as a SQLAlchemy URL."""
    return f"sqlite:///{(Path(tune_dir) / DEFAULT_FILE).resolve()}"


def masked(url: str) -> str:
    """The URL with any password replaced by `***`, safe to write into files and logs."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def has_hidden_password(url: str) -> bool:
    """True when `url` is a masked URL whose password was hidden."""
    try:
        return sqlalchemy.engine.make_url(url).password == "***"
    except sqlalchemy.exc.ArgumentError:
        return False


def with_driver(url: str) -> str:
    """A bare `postgresql://` URL with the PostgreSQL driver that is installed.

    SQLAlchemy's default driver for `postgresql://` changed from psycopg2 to psycopg (3) in 2.1;
    either one serves, so the URL names whichever is present. Other URLs are returned as given.
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    if parsed.drivername != "postgresql":
        return url
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=driver).render_as_string(hide_password=False)
    return url


def _engine_kwargs(url: str) -> dict:
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    if backend in ("postgresql", "mysql"):
        # Without it an unreachable host hangs for minutes on the TCP connect.
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS}}
    return {}


def open_storage(
    url: str, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> RDBStorage:
    """Connects to the storage and creates Optuna's tables if needed.

    Args:
        url: A SQLAlchemy database URL.
        on_stale: Called with each trial failed for a stale heartbeat.

    Raises:
        UserError: When the URL is malformed, its driver is missing or the server is unreachable.
    """
    shown = masked(url)
    try:
        sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(
            f"--storage '{shown}' is not a database URL; use e.g. sqlite:///study.db or "
            "postgresql://user@host:5432/db"
        ) from None
    url = with_driver(url)
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" in Optuna; they are what reclaims lost trials.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=on_stale,
                )
        except ImportError as error:
            # Optuna wraps the driver's ModuleNotFoundError in an ImportError.
            missing = getattr(error.__cause__, "name", None) or getattr(error, "name", None)
            raise UserError(
                f"--storage '{shown}' needs the database driver '{missing or 'for its URL'}'; "
                "for PostgreSQL install `pip install compactcnn[postgres]`"
            ) from None
        except (sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as error:
            raise UserError(f"--storage '{shown}' is not usable: {_first_line(error)}") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            # Another process created the same tables or types at the same moment (SQLite
            # reports this as an OperationalError, below); the next attempt finds them.
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.5)
                continue
            raise UserError(
                f"cannot set up the study storage '{shown}': {_first_line(error.orig or error)}"
            ) from None
        except sqlalchemy.exc.OperationalError as error:
            if "already exists" in str(error) and attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.5)
                continue
            raise UserError(
                f"cannot reach the study storage '{shown}': {_first_line(error.orig or error)}; "
                "check that the database server runs and the URL is right"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
