"""The mesh with mutual TLS on: services and clients show certificates of the mesh's CA; a client
without one, or with one from another CA, does not get a connection."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from memos_sdk import MemosAPIError, MemosClient
from memos_sdk.channels import Tls
from tests.conftest import in_process_mesh, mesh_keys

pytestmark = [pytest.mark.integration, pytest.mark.security]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path, cn: str = "memos test CA") -> None:
    """A CA and two leaf certificates for 127.0.0.1/localhost: service.* and client.*."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for leaf in ("service", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"memos {leaf}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        (directory / f"{leaf}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{leaf}.key").write_bytes(_pem(key))


async def test_the_mesh_runs_with_mutual_tls_and_refuses_clients_without_a_certificate(
    nats, triton_addr, tmp_path
):
    make_pki(mesh_keys(tmp_path).directory / "tls")
    make_pki(tmp_path / "other-ca", cn="another CA")
    async with in_process_mesh(nats, triton_addr, tmp_path, lifecycle={}) as mesh:
        # Through TLS everywhere: client -> reader/scheduler -> vault, services -> governance.
        added = await mesh.client.add_messages(
            "tls", [{"speaker": "alice", "text": "The boat is moored at pier 9."}], wait_applied=True
        )
        hits = await mesh.client.search("tls", "where is the boat?")
        assert hits.results and "pier 9" in hits.results[0].memory.text
        await mesh.client.set_policy("tls")  # the lifecycle too
        assert (await mesh.client.get(added.memory_names[0])).name == added.memory_names[0]

        plaintext = MemosClient(mesh.endpoints, token="unused", tls=None, timeout_seconds=5)
        strangers = MemosClient(
            mesh.endpoints,
            token="unused",
            tls=Tls.from_files(*(tmp_path / "other-ca" / f for f in ("ca.pem", "client.pem", "client.key"))),
            timeout_seconds=5,
        )
        for client in (plaintext, strangers):
            async with client:
                with pytest.raises(MemosAPIError) as err:
                    await client.search("tls", "where is the boat?")
                assert err.value.code == grpc.StatusCode.UNAVAILABLE
