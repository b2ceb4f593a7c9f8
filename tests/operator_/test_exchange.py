"""The operator's connection to the exchange, on a real nats-server with the real
accounts and permissions (docs/security.md), as the ``operator`` identity: over mutual
TLS with the files the chart mounts; and what it reads from the exchange's buckets: values
anyone with access may have written that are not what engines or the operator write are
skipped and counted, never an error that stops a reconciliation or a status reading."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import nats
import pytest
from prometheus_client import REGISTRY

from tests.support.exchange import run
from tradeplane.processes import NatsServer
from tradeplane_operator.config import Config
from tradeplane_operator.errors import ExchangeError
from tradeplane_operator.exchange import (
    LEASES_BUCKET,
    MARKETS_BUCKET,
    REPLICAS_BUCKET,
    Exchange,
    tls_context,
)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificates(directory: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir()
    files = {name: directory / name for name in (
        "ca.crt", "ca.key", "server.crt", "server.key", "tls.crt", "tls.key")}
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *curve, "-keyout", str(files["ca.key"]),
             "-out", str(files["ca.crt"]), "-days", "1", "-subj", "/CN=tradeplane test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, extensions in (("server", ["subjectAltName=IP:127.0.0.1",
                                         "extendedKeyUsage=serverAuth"]),
                             ("tls", ["extendedKeyUsage=clientAuth"])):
        key, certificate = files[f"{name}.key"], files[f"{name}.crt"]
        request = directory / f"{name}.csr"
        _openssl("req", "-new", *curve, "-keyout", str(key), "-out", str(request),
                 "-subj", f"/CN={name}")
        extfile = directory / f"{name}.ext"
        extfile.write_text("\n".join(extensions) + "\n")
        _openssl("x509", "-req", "-in", str(request), "-CA", str(files["ca.crt"]),
                 "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "1",
                 "-out", str(certificate), "-extfile", str(extfile))
    return files


def test_the_operator_connects_over_mutual_tls_with_the_mounted_files(tmp_path: Path) -> None:
    """The chart mounts the CA bundle and the client certificate and names them in
    TRADEPLANE_NATS_CA, _CERT and _KEY; the operator reads them as every process does.
    The server requires TLS and a client certificate signed by the CA, and the
    operator's credentials: a connection at all shows every file was used."""
    files = certificates(tmp_path / "tls")
    server = NatsServer.secured(tmp_path / "nats")
    assert server.config is not None
    assert server.secrets is not None
    # The accounts and permissions, and TLS: nats-server includes a file relative to
    # the including one.
    server_config = server.config.with_name("tls.conf")
    server_config.write_text(
        f'include "{server.config.name}"\n'
        f'tls {{\n  cert_file: "{files["server.crt"]}"\n  key_file: "{files["server.key"]}"\n'
        f'  ca_file: "{files["ca.crt"]}"\n  verify: true\n  timeout: 2\n}}\n')
    server.config = server_config
    config = Config.from_environment({
        "TRADEPLANE_CREDENTIALS": str(server.secrets.credentials("operator")),
        "TRADEPLANE_NATS_CA": str(files["ca.crt"]), "TRADEPLANE_NATS_CERT":
        str(files["tls.crt"]), "TRADEPLANE_NATS_KEY": str(files["tls.key"])})

    async def scenario() -> None:
        with server:
            exchange = await Exchange.connect(server.url,
                                              credentials_file=config.nats_credentials,
                                              ca_file=config.nats_ca,
                                              cert_file=config.nats_cert,
                                              key_file=config.nats_key)
            try:
                await exchange.put_definition("sol-usdt", {"name": "sol-usdt"})
                assert await exchange.definition("sol-usdt") == {"name": "sol-usdt"}
            finally:
                await exchange.close()
            # Without the client certificate the server refuses the connection (the
            # TLS alert "certificate required", or the connection closed, as the race
            # goes).
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await nats.connect(server.url, tls=tls_context(config.nats_ca),
                                   allow_reconnect=False, connect_timeout=2,
                                   **server.access("operator").options())

    run(scenario())


def test_tls_files_that_cannot_be_read_are_an_exchange_error(tmp_path: Path) -> None:
    assert tls_context(None) is None
    with pytest.raises(ExchangeError, match="NATS TLS files"):
        tls_context(str(tmp_path / "missing-ca.crt"))
    (tmp_path / "not-a-cert.pem").write_text("not a certificate\n")
    with pytest.raises(ExchangeError, match="NATS TLS files"):
        tls_context(None, str(tmp_path / "not-a-cert.pem"))


async def operator_exchange(server: NatsServer) -> Exchange:
    """The operator's connection, with its own credentials; the test writes what it
    reads as the admin."""
    assert server.secrets is not None
    return await Exchange.connect(server.url,
                                  credentials_file=str(server.secrets.credentials("operator")))


def skipped(what: str) -> float:
    return REGISTRY.get_sample_value("tradeplane_operator_untrusted_skipped_total",
                                     {"what": what}) or 0.0


@pytest.mark.parametrize("value", [
    b"\xff\x00 not json",
    b'["sol-usdt"]',
    json.dumps({"name": "other-usdt", "tickSize": "1"}).encode(),
    json.dumps({"name": "sol-usdt", "padding": "x" * 100_000}).encode(),
], ids=["not JSON", "not an object", "another market's", "huge"])
def test_a_bad_definition_reads_as_none_and_is_replaced(tmp_path: Path, value: bytes) -> None:
    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            exchange = await operator_exchange(server)
            admin = await nats.connect(server.url, **server.access("admin").options())
            try:
                await exchange.put_definition("sol-usdt", {"name": "sol-usdt"})
                assert await exchange.definition("sol-usdt") == {"name": "sol-usdt"}
                kv = await admin.jetstream().key_value(MARKETS_BUCKET)
                await kv.put("sol-usdt", value)
                before = skipped("market definition")
                assert await exchange.definition("sol-usdt") is None
                assert skipped("market definition") == before + 1
                # The operator's next write replaces it.
                await exchange.put_definition("sol-usdt", {"name": "sol-usdt"})
                assert await exchange.definition("sol-usdt") == {"name": "sol-usdt"}
            finally:
                await admin.close()
                await exchange.close()

    run(scenario())


def test_reports_and_leases_that_are_not_are_skipped(tmp_path: Path) -> None:
    """The status reading goes on with the reports that are real; a lease that is not
    one reads as none (the replicas let it lapse and replace it)."""
    good = {"market": "sol-usdt", "replica": "good", "role": "leader", "epoch": 2,
            "ready": True, "lastFailover": 1_795_293_344_818_800_267}
    bad = [b"\xff\x00 not json", b'["a"]', b'{"replica": "x", "epoch": 1e400}',
           json.dumps({**good, "replica": "y", "lastFailover": 1e30}).encode(),
           json.dumps({**good, "replica": "z", "epoch": [1]}).encode()]

    async def scenario() -> None:
        with NatsServer.secured(tmp_path / "nats") as server:
            exchange = await operator_exchange(server)
            admin = await nats.connect(server.url, **server.access("admin").options())
            try:
                js = admin.jetstream()
                reports = await js.create_key_value(bucket=REPLICAS_BUCKET, history=1)
                for number, value in enumerate(bad):
                    await reports.put(f"sol-usdt.bad-{number}", value)
                await reports.put("sol-usdt.good", json.dumps(good).encode())
                before = skipped("replica report")
                assert [report.replica for report in await exchange.replicas("sol-usdt")] \
                    == ["good"]
                assert skipped("replica report") == before + len(bad)

                leases = await js.create_key_value(bucket=LEASES_BUCKET, history=1)
                for value in (b"\xff not json", b"[1]", b'{"holder": "a", "epoch": 1e400}'):
                    await leases.put("sol-usdt", value)
                    before = skipped("lease")
                    assert await exchange.lease("sol-usdt") is None
                    assert skipped("lease") == before + 1
            finally:
                await admin.close()
                await exchange.close()

    run(scenario())
