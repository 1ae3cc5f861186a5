"""Alembic's entry point. kefu runs migrations itself (`Store.open`), on its own connection.

`kefu.store.repository.migrations_config` puts that connection in `config.attributes`; there is
no alembic.ini and no offline (SQL script) mode. To write the next migration, copy
`versions/0001_initial.py`'s shape (explicit `op` calls) and let tests/store/test_migrations.py
check it against the models.
"""

from alembic import context

from kefu.errors import KefuError
from kefu.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise KefuError(
        "kefu's migrations run on a connection kefu opens: use kefu.store.repository.Store.open(url) "
        "(or migrations_config(connection)), not the alembic command line."
    )
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
