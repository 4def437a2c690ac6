"""The CRM simulator for tests: one real subprocess per session, reset per test.

``crm_simulator`` serves plain HTTP; ``crm_simulator_tls`` serves HTTPS with a throwaway
self-signed certificate, for clients that only speak https (simple-salesforce).  Both
know one OAuth client whose secret is made up per session and passed by environment.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import ssl
from dataclasses import dataclass

import pytest

from tests.support.shared import shared
from workers.crm_sim import start_crm_simulator
from workers.crm_sim.admin import CrmSimulatorAdmin

CLIENT_ID = "coexist"


@dataclass
class CrmSim:
    """A running simulator: its URL, its admin client and the OAuth client's secret."""

    url: str
    admin: CrmSimulatorAdmin
    client_id: str
    client_secret: str
    #: CA file of the simulator's self-signed certificate (TLS only).
    ca_file: str | None = None

    @property
    def verify(self) -> bool | ssl.SSLContext:
        """What an httpx client verifies the simulator with."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def __getattr__(self, name):
        return getattr(self.admin, name)


def _self_signed(directory) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "crm.pem", directory / "crm.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _start(directory, *, tls: bool):
    secret = secrets.token_urlsafe(16)
    pair = _self_signed(directory) if tls else None
    sim = start_crm_simulator(directory / "crm.db", clients={CLIENT_ID: secret}, tls=pair)
    ca_file = pair[0] if pair else None
    verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return sim, CrmSim(sim.url, CrmSimulatorAdmin(sim.url, verify=verify), CLIENT_ID, secret,
                       ca_file)


def _shared(tmp_path_factory, *, tls: bool):
    """The session's simulator (HTTP or HTTPS), whichever modules import its fixture."""
    def start():
        sim, handle = _start(tmp_path_factory.mktemp("crm_sim_tls" if tls else "crm_sim"),
                             tls=tls)

        def stop() -> None:
            try:
                handle.admin.close()
            finally:
                sim.stop()
        return handle, stop

    return shared("crm_sim_tls" if tls else "crm_sim", start)


@pytest.fixture(scope="session")
def crm_simulator(tmp_path_factory):
    """One CRM simulator subprocess (HTTP) for the session."""
    with _shared(tmp_path_factory, tls=False) as handle:
        yield handle


@pytest.fixture
def crm(crm_simulator):
    """The session's CRM simulator, emptied, without faults, budget and clock reset."""
    crm_simulator.reset()
    return crm_simulator


@pytest.fixture(scope="session")
def crm_simulator_tls(tmp_path_factory):
    """One CRM simulator subprocess serving HTTPS for the session."""
    pytest.importorskip("cryptography")
    with _shared(tmp_path_factory, tls=True) as handle:
        yield handle


@pytest.fixture
def crm_tls(crm_simulator_tls):
    crm_simulator_tls.reset()
    return crm_simulator_tls
