"""TLS for the node protocol of a filesystem made with `dfs mkfs --tls` (README "Security").

The cluster's CA is rebuilt from the cluster key by whoever holds it: its Ed25519
key is derived from the key, and its certificate comes out byte for byte the
same everywhere (fixed fields; Ed25519 signatures are deterministic). So there
is no CA file to copy or to keep private besides the key file, and rotating
the key replaces the CA. A node makes itself a fresh key pair and a
certificate signed by the CA each time it starts, held in memory only. Clients
(mounts, tools, nodes copying to nodes) accept a node only with a certificate
of the CA, TLS 1.3; the key's handshake and frame MACs still run inside, so
TLS adds privacy, and a man in the middle without the key cannot read along.
"""

import datetime
import hmac
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfs cluster CA")])
_CA_FROM = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
_PEM = serialization.Encoding.PEM


def _ca(key: bytes) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    ca_key = ed25519.Ed25519PrivateKey.from_private_bytes(hmac.digest(key, b"dfs tls ca", "sha256"))
    cert = (x509.CertificateBuilder().subject_name(_CA_NAME).issuer_name(_CA_NAME)
            .public_key(ca_key.public_key()).serial_number(1)
            .not_valid_before(_CA_FROM).not_valid_after(_CA_FROM.replace(year=2120))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, None))
    return ca_key, cert


def client_context(key: bytes) -> ssl.SSLContext:
    """What a client of the nodes dials them with: only the cluster CA's certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # nodes go by address; the CA certifies nodes of this cluster only
    ctx.load_verify_locations(cadata=_ca(key)[1].public_bytes(_PEM).decode())
    return ctx


def zookeeper_pems(key: bytes) -> tuple[bytes, bytes]:
    """(key store, trust store) PEM files for a ZooKeeper server's secureClientPort
    (ssl.keyStore.type=PEM): a new ECDSA P-256 key and a certificate from the cluster
    CA, chain included; the CA's certificate. Clients check it with client_context."""
    ca_key, ca_cert = _ca(key)
    zk_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfs zookeeper")]))
            .issuer_name(_CA_NAME).public_key(zk_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(ca_key, None))
    keystore = (zk_key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
                + cert.public_bytes(_PEM) + ca_cert.public_bytes(_PEM))
    return keystore, ca_cert.public_bytes(_PEM)


def server_context(key: bytes, scratch: Path) -> ssl.SSLContext:
    """A node's: a new key pair and certificate from the cluster CA. `scratch`: a
    private directory (ssl loads a certificate chain from a file only: one of
    mode 0600 there, removed at once)."""
    ca_key, ca_cert = _ca(key)
    node_key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dfs node")]))
            .issuer_name(_CA_NAME).public_key(node_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))  # clocks differ
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(ca_key, None))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(node_key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
                    + cert.public_bytes(_PEM) + ca_cert.public_bytes(_PEM))
        ctx.load_cert_chain(name)
    finally:
        os.unlink(name)
    return ctx
