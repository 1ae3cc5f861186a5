"""Where conversations live: SQLite (WAL) by default, PostgreSQL by URL (`repository.Store`)."""
