"""Throwaway PostgreSQL databases, for tests and benchmarks that need a fresh, empty one."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import psycopg
from psycopg import sql


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str = "kefu_scratch") -> Iterator[str]:
    """Create `<prefix>_<hex>` on the server of `admin_url`, yield its URL, drop it afterwards.

    Args:
        admin_url: postgresql://… of a role that may create databases, on any database.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
            # Connections a test or a killed server left open would block the drop.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )
            admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
