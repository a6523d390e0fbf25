"""Session fixtures that start the real services once (or reuse running ones) and clean up what they made."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamrec.services import maven
from streamrec.services.cassandra import CassandraService, apply_schema, connect
from streamrec.services.clients import kafka_kwargs
from streamrec.services.flink import FlinkService
from streamrec.services.kafka import KafkaService
from streamrec.services.settings import ServicesConf, services


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def _ensure(svc: Any) -> Iterator[None]:
    """Reuse `svc` if it answers (whoever started it), else start it and stop it at the end of the session.

    Tests make their own topics and keyspaces, so a reused service needs no set-up."""
    if svc.healthy():
        yield
        return
    svc.up()
    yield
    svc.down()


@pytest.fixture(scope="session")
def services_conf() -> ServicesConf:
    return services()


@pytest.fixture(scope="session")
def kafka_bootstrap(services_conf: ServicesConf) -> Iterator[str]:
    if services_conf.kafka.managed:
        yield from (services_conf.kafka.bootstrap for _ in _ensure(KafkaService(services_conf)))
    else:
        yield services_conf.kafka.bootstrap


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: create a uuid-named topic (deleted at the end of the test)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(**kafka_kwargs(kafka_bootstrap), client_id="streamrec-tests")
    made: list[str] = []

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"test-{prefix}-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        made.append(name)
        return name

    yield make
    with contextlib.suppress(Exception):
        admin.delete_topics(made)
    admin.close()


@pytest.fixture
def kafka_topic(make_topic: Callable[..., str]) -> str:
    return make_topic()


@pytest.fixture(scope="session")
def cassandra_up(services_conf: ServicesConf) -> Iterator[ServicesConf]:
    if services_conf.cassandra.managed:
        yield from (services_conf for _ in _ensure(CassandraService(services_conf)))
    else:
        yield services_conf


@pytest.fixture(scope="session")
def cassandra_keyspace(cassandra_up: ServicesConf) -> Iterator[str]:
    """A per-session keyspace with the product schema applied, dropped at the end."""
    c = cassandra_up.cassandra
    ks = f"test_{uuid.uuid4().hex[:12]}"
    apply_schema(c.contact_points, c.native_port, c, keyspace=ks)
    yield ks
    session = connect(c.contact_points, c.native_port)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
    finally:
        session.cluster.shutdown()


@pytest.fixture
def cassandra_session(cassandra_up: ServicesConf, cassandra_keyspace: str) -> Iterator[Any]:
    c = cassandra_up.cassandra
    session = connect(c.contact_points, c.native_port, keyspace=cassandra_keyspace)
    yield session
    session.cluster.shutdown()


@pytest.fixture(scope="session")
def connector_jars(services_conf: ServicesConf) -> list[Path]:
    return maven.connector_jars(services_conf.state_path)


@pytest.fixture(scope="session")
def flink_cluster(services_conf: ServicesConf) -> Iterator[FlinkService]:
    svc = FlinkService(services_conf)
    yield from (svc for _ in _ensure(svc))
