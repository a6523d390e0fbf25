"""The secured profile's settings without services: where passwords come from, what the job's Java clients get
(never the password), the brokers' and nodes' listener config, and the local secrets made with openssl."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from pathlib import Path

import pytest

from streamrec import config
from streamrec.services import secrets
from streamrec.services.cassandra import CassandraService
from streamrec.services.clients import (
    CredentialsError,
    cassandra_cluster_kwargs,
    kafka_java_properties,
    kafka_security_kwargs,
    read_secret,
)
from streamrec.services.kafka import KafkaService
from streamrec.services.settings import ServicesConf


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("secrets")
    secrets.ensure(d)
    return d


def secure_conf(secrets_dir: Path, **env: str) -> ServicesConf:
    """conf/secure.yaml with its secrets (the password files and the CA) in `secrets_dir`."""
    conf = config.load(ServicesConf, config.CONF_DIR / "secure.yaml", env=env)
    k, c = conf.kafka.security, conf.cassandra.security
    return dataclasses.replace(
        conf, secrets_dir=str(secrets_dir),
        kafka=dataclasses.replace(conf.kafka, security=dataclasses.replace(
            k, password_file=str(secrets_dir / "kafka-client.password"), ca_file=str(secrets_dir / "ca.pem"))),
        cassandra=dataclasses.replace(conf.cassandra, security=dataclasses.replace(
            c, password_file=str(secrets_dir / "cassandra-client.password"), ca_file=str(secrets_dir / "ca.pem"))))


def test_secure_profile_extends_the_default_one() -> None:
    plain = config.load(ServicesConf, config.CONF_DIR / "services.yaml", env={})
    sec = config.load(ServicesConf, config.CONF_DIR / "secure.yaml", env={})
    assert sec.kafka.security.protocol == "SASL_SSL" and sec.cassandra.security.tls
    assert not plain.kafka.security.secured and not plain.cassandra.security.username
    assert sec.kafka.topics == plain.kafka.topics  # the rest comes from services.yaml
    # its own ports and data: both profiles' services can run side by side
    assert sec.kafka.port != plain.kafka.port and sec.cassandra.native_port != plain.cassandra.native_port
    assert sec.services_path != plain.services_path and sec.state_path == plain.state_path


def test_password_from_env_before_file_and_files_must_be_exact(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file")
    monkeypatch.delenv("PW_X", raising=False)
    assert read_secret("x", "PW_X", str(f)) == "from-file"
    monkeypatch.setenv("PW_X", "from-env")
    assert read_secret("x", "PW_X", str(f)) == "from-env"
    monkeypatch.delenv("PW_X")
    f.write_text("from-file\n")  # Kafka's DirectoryConfigProvider would send the newline as part of the password
    with pytest.raises(CredentialsError, match="whitespace"):
        read_secret("x", "PW_X", str(f))
    with pytest.raises(CredentialsError, match="cannot read the password file .*missing"):
        read_secret("Kafka 1.2.3.4:9", "PW_X", str(tmp_path / "missing"))
    with pytest.raises(CredentialsError, match=r"\$PW_X"):
        read_secret("x", "PW_X", "")


def test_java_client_properties_refer_to_the_password_never_hold_it(secrets_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_KAFKA_PASSWORD", raising=False)
    sec = secure_conf(secrets_dir).kafka.security
    password = (secrets_dir / "kafka-client.password").read_text()
    props = kafka_java_properties(sec)
    assert props["security.protocol"] == "SASL_SSL" and props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["ssl.truststore.type"] == "PEM" and props["ssl.endpoint.identification.algorithm"] == "https"
    jaas = props["sasl.jaas.config"]
    assert jaas.startswith("org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule ")
    assert f'password="${{dir:{secrets_dir}:kafka-client.password}}"' in jaas
    assert props["config.providers.dir.class"].endswith("common.config.provider.DirectoryConfigProvider")
    assert all(password not in v for v in props.values())

    monkeypatch.setenv("STREAMREC_KAFKA_PASSWORD", "env-secret-123")
    props = kafka_java_properties(sec)
    assert 'password="${env:STREAMREC_KAFKA_PASSWORD}"' in props["sasl.jaas.config"]
    assert props["config.providers"] == "env" and all("env-secret-123" not in v for v in props.values())
    assert kafka_java_properties(ServicesConf().kafka.security) == {}  # PLAINTEXT: nothing added


def test_python_clients_get_tls_and_login(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_KAFKA_PASSWORD", raising=False)
    monkeypatch.delenv("STREAMREC_CASSANDRA_PASSWORD", raising=False)
    conf = secure_conf(secrets_dir)
    kw = kafka_security_kwargs(conf.kafka.security, conf.kafka.bootstrap)
    assert kw["security_protocol"] == "SASL_SSL" and kw["ssl_check_hostname"] is True
    assert kw["sasl_plain_password"] == (secrets_dir / "kafka-client.password").read_text()
    assert kafka_security_kwargs(ServicesConf().kafka.security, "x:1") == {}
    ckw = cassandra_cluster_kwargs(conf.cassandra.security, ["127.0.0.1"], 9142)
    assert ckw["auth_provider"].username == "streamrec"
    assert ckw["ssl_context"].verify_mode == ssl.CERT_REQUIRED and ckw["ssl_context"].check_hostname
    assert cassandra_cluster_kwargs(ServicesConf().cassandra.security, ["127.0.0.1"], 9042) == {}


def test_broker_listens_only_on_sasl_ssl_and_mutual_tls(secrets_dir: Path) -> None:
    props = dict(line.split("=", 1) for line in KafkaService(secure_conf(secrets_dir)).server_properties().splitlines())
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9192,CONTROLLER://127.0.0.1:9193"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SSL"
    assert "PLAINTEXT" not in props["listeners"] + props["advertised.listeners"] + props["inter.broker.listener.name"]
    assert props["listener.name.controller.ssl.client.auth"] == "required"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    plain = KafkaService(ServicesConf()).server_properties()
    assert "sasl" not in plain and "ssl" not in plain


def test_cassandra_node_wants_passwords_and_tls_only(secrets_dir: Path) -> None:
    yml = CassandraService(secure_conf(secrets_dir)).cassandra_yaml()
    assert yml["authenticator"] == "PasswordAuthenticator"
    enc = yml["client_encryption_options"]
    assert enc["enabled"] is True and enc["optional"] is False and Path(enc["keystore"]).exists()
    assert enc["keystore_password"] == (secrets_dir / "keystore.password").read_text()
    plain = CassandraService(ServicesConf()).cassandra_yaml()
    assert plain["authenticator"] == "AllowAllAuthenticator" and "client_encryption_options" not in plain


def test_local_secrets_are_made_once_private_and_verify(secrets_dir: Path) -> None:
    assert secrets.ensure(secrets_dir) == []  # a second call makes nothing
    modes = {p.name: p.stat().st_mode & 0o777 for p in secrets_dir.iterdir()}
    assert set(modes.values()) == {0o600}, modes
    assert (secrets_dir.stat().st_mode & 0o777) == 0o700
    for name in secrets.PASSWORDS:
        pw = secrets.read_password(secrets_dir, name)
        assert len(pw) == 32 and pw == pw.strip()
    assert len({secrets.read_password(secrets_dir, n) for n in secrets.PASSWORDS}) == len(secrets.PASSWORDS)
    verify = subprocess.run(["openssl", "verify", "-CAfile", "ca.pem", "server.pem"], cwd=secrets_dir,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", "server.pem", "-noout", "-ext", "subjectAltName"],
                          cwd=secrets_dir, capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    ks_pw = secrets.read_password(secrets_dir, "keystore")
    p12 = subprocess.run(["openssl", "pkcs12", "-in", "server.p12", "-nokeys", "-passin", f"pass:{ks_pw}"],
                         cwd=secrets_dir, capture_output=True, text=True)
    assert p12.returncode == 0 and p12.stdout.count("BEGIN CERTIFICATE") == 2  # the server's and the CA's
