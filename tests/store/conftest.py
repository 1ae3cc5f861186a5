import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from kefu.store.repository import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """An empty database: a SQLite file, then a fresh PostgreSQL database (see postgres_url)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kefu.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url):
    """A migrated Store on each kind of database."""
    with Store.open(database_url) as store:
        yield store


@pytest.fixture
def engine(database_url):
    """A plain SQLAlchemy engine on the same database, to look past the Store at what is stored."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    yield engine
    engine.dispose()
