"""Nodes talk TLS to an etcd that requires client certificates (issue 8 item 7)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from actorcore.gcs import ControlStoreUnavailableError, EtcdProcess

from actorcore.testing import Cluster

pytestmark = [pytest.mark.etcd, pytest.mark.timeout(90)]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _certificates(d: Path) -> tuple[str, str, str]:
    """A throwaway CA and one certificate (server and client use) for 127.0.0.1."""
    ca, ca_key = d / "ca.pem", d / "ca.key"
    cert, key, csr, ext = d / "cert.pem", d / "cert.key", d / "cert.csr", d / "ext.cnf"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "1", "-subj", "/CN=actorcore-test-ca")  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1")  # fmt: skip
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return str(cert), str(key), str(ca)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_node_joins_through_an_etcd_with_tls_and_client_certificates(tmp_path: Path):
    from actorcore._config import Config
    from actorcore._driver import resolve_token

    cert, key, ca = _certificates(tmp_path)
    with EtcdProcess(namespace="unused", tls=(cert, key, ca)) as server:
        c = Cluster(num_nodes=0, etcd=server, ttl_s=3.0)
        c.start()
        try:
            with pytest.raises(ControlStoreUnavailableError):
                resolve_token(Config(), c.address)  # plain text: refused
            login = {"etcd_ca": ca, "etcd_cert": cert, "etcd_key": key}
            node = c.add_node(num_cpus=1, **login)
            assert [r["NodeID"] for r in node.nodes()] == [node.node_id]
            assert resolve_token(Config(**login), c.address) == node.token
        finally:
            c.shutdown()
