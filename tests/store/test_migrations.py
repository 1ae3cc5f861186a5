from concurrent.futures import ThreadPoolExecutor

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from kefu.store.models import Base
from kefu.store.repository import Store, migrations_config


def schema_differences(engine) -> list:
    """What `alembic revision --autogenerate` would write: nothing while the two agree."""
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


def test_the_migrated_schema_is_the_models(database_url, engine):
    Store.open(database_url).close()
    assert schema_differences(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert tables == {*Base.metadata.tables, "alembic_version"}


def test_downgrade_to_nothing_and_back(database_url, engine):
    Store.open(database_url).close()
    with engine.begin() as connection:
        command.downgrade(migrations_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

    with engine.begin() as connection:
        command.upgrade(migrations_config(connection), "head")
    assert schema_differences(engine) == []
    with Store.open(database_url) as store:
        conversation_id, _ = store.start_conversation("web", None, None, [])
        assert store.conversation(conversation_id).status == "open"


def test_servers_starting_together_migrate_a_new_database_once(postgres_url):
    # Several workers or replicas open the same fresh database at once (kefu serve --workers N).
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: Store.open(postgres_url), range(4)))
    for store in stores:
        store.close()
    with Store.open(postgres_url, migrate=False) as store:
        assert store.count_messages() == 0
