"""Database engine, sessions and schema migrations.

Why these settings: SQLite is the embedded default, so it runs in WAL mode
(readers never block the listener's writers), with a busy timeout and
``BEGIN IMMEDIATE`` so concurrent associations queue for the write lock instead
of failing with "database is locked". The database file and its ``-wal`` and
``-shm`` hold patient attributes: they get the node's private modes
(:class:`~segnode.storage.filestore.FileModes`), not the umask's. PostgreSQL needs
none of that.

The schema is owned by Alembic. Only ``segnode serve`` and ``segnode db upgrade`` migrate
(:func:`open_database` with ``migrate=True``); every other command opens the database as it is
and refuses a schema that is behind, naming ``segnode db upgrade``: an operator's
``segnode jobs list`` must not change a production schema under a running node.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import StorageSettings
from segnode.storage.errors import DatabaseSchemaError
from segnode.storage.filestore import FileModes

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "segnode_read_only"


def create_db_engine(url: str, sqlite_synchronous: str = "FULL", file_group: str = "") -> Engine:
    """Create the engine for ``url``; SQLite gets WAL and immediate transactions.

    Args:
        url: SQLAlchemy URL.
        sqlite_synchronous: ``PRAGMA synchronous`` for SQLite.
        file_group: ``storage.file_group``: the SQLite files become 0640 for that
            group; empty means 0600.

    Raises:
        FileGroupError: ``file_group`` is not a known group.
    """
    if url.startswith("sqlite"):
        database_file = sqlite_file(url)
        modes = FileModes.for_group(file_group)
        if database_file is not None:
            _prepare_sqlite_file(database_file, modes)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _configure_sqlite(engine, sqlite_synchronous)
        if database_file is not None:
            _keep_sidecars_private(engine, database_file, modes)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite ``url``; None for another backend or an in-memory database."""
    if not url.startswith("sqlite") or "///" not in url:
        return None
    database_file = url.split("///", 1)[1].split("?", 1)[0]
    return Path(database_file) if database_file and database_file != ":memory:" else None


def open_database(storage: StorageSettings, *, migrate: bool) -> Engine:
    """The engine on the configured database; ``migrate`` brings its schema to the newest version.

    Without ``migrate`` the schema must already be current, and a missing SQLite file is not
    created: a read-only command pointed at the wrong ``--data-dir`` leaves nothing behind.

    Raises:
        DatabaseSchemaError: not migrating, and the schema is behind (or there is no database);
            the message names ``segnode db upgrade``.
        FileGroupError: ``storage.file_group`` is not a known group.
    """
    url = storage.resolved_database_url()
    database_file = sqlite_file(url)
    if not migrate and database_file is not None and not database_file.exists():
        raise DatabaseSchemaError(
            f"no database at {database_file}: run `segnode db upgrade` (or check --data-dir)"
        )
    engine = create_db_engine(url, storage.sqlite_synchronous.value, file_group=storage.file_group)
    try:
        if migrate:
            upgrade_to_head(engine)
        else:
            require_current_schema(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def rowcount(result: object) -> int:
    """Rows an UPDATE matched (``Session.execute`` is typed as returning a plain Result)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def _prepare_sqlite_file(database: Path, modes: FileModes) -> None:
    """Create the database file ourselves, so SQLite never creates it with 0644.

    An empty file is a valid empty SQLite database. An existing one (from an
    older version) is tightened. SQLite creates ``-wal`` and ``-shm`` with the
    database file's mode.
    """
    modes.make_dirs(database.parent)
    try:
        os.close(modes.create_file(database))
    except FileExistsError:
        modes.apply_file(database)
    for sidecar in _sidecars(database):
        if sidecar.exists():
            modes.apply_file(sidecar)


def _sidecars(database: Path) -> tuple[Path, Path]:
    return database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")


def _keep_sidecars_private(engine: Engine, database: Path, modes: FileModes) -> None:
    """Hand ``-wal``/``-shm`` to the configured group whenever a connection (re)creates them.

    SQLite copies the database file's mode to them but, unless running as
    root, not its group. They are created when the first connection opens the
    database (and removed after the last closes), i.e. on a "connect" event.
    """
    if modes.gid is None:
        return

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, _record: Any) -> None:
        for sidecar in _sidecars(database):
            try:
                modes.apply_file(sidecar)
            except FileNotFoundError:
                continue


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the lock up front (no deadlock-prone lock upgrade);
        # read-only sessions must not queue behind them.
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def read_only_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only: on SQLite it does not wait for the write lock."""
    with sessions() as session:
        session.connection(execution_options={READ_ONLY_OPTION: True})
        yield session


def _alembic_config(engine: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Apply every pending migration (idempotent)."""
    command.upgrade(_alembic_config(engine), "head")


def head_revision() -> str:
    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    head = script.get_current_head()
    if head is None:
        raise DatabaseSchemaError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current_schema(engine: Engine) -> None:
    """Raise unless the database is at the newest migration."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseSchemaError(
            f"database schema is at {current or 'nothing'}, this version needs {head}: "
            "run `segnode db upgrade`"
        )
