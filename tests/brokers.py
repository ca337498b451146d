"""A real mosquitto broker on 127.0.0.1 for tests, a recording MQTT subscriber, and test certificates.

`Broker` writes its own config into a work directory and keeps its port(s) across
stop/start, so a test can take the broker away under a running client and bring
it back where the client expects it.
"""

from __future__ import annotations

import asyncio
import datetime
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
_STARTUP_TIMEOUT = 10.0
WAIT = 10.0  # seconds any test wait may take before it fails; generous, only a broken feature reaches it


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def woken_until(changed: asyncio.Event, holds: Callable[[], bool]) -> None:
    """Wait until `holds()`, looking again each time `changed` is set (no polling); TimeoutError after WAIT s."""
    async with asyncio.timeout(WAIT):
        while not holds():
            changed.clear()
            await changed.wait()


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str = "condition") -> None:
    """Poll `condition` (sync or async) until it holds; fail the test after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT} s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class CertAndKey:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and what it signed (PEM files)."""

    ca: Path
    server: CertAndKey  # valid for 127.0.0.1 and localhost
    wrong_name: CertAndKey  # valid only for wrong.example
    client: CertAndKey  # a client certificate for mutual TLS
    client_key_password: str  # `client.key` is encrypted with this


class Broker:
    """One mosquitto process; `start()`, `stop()`, `start()` again on the same ports."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None,
                 tls: CertAndKey | None = None, ca: Path | None = None,
                 require_client_cert: bool = False, persistence: bool = False) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.log_file = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._config = workdir / "mosquitto.conf"
        self._config.write_text(self._render(users, tls, ca, require_client_cert, persistence))

    def _render(self, users: dict[str, str] | None, tls: CertAndKey | None, ca: Path | None,
                require_client_cert: bool, persistence: bool) -> str:
        lines = [
            f"user {getpass.getuser()}",  # as root mosquitto would switch to 'mosquitto', which cannot read tmp dirs
            f"log_dest file {self.log_file}",
            "log_type all",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"listener {self.port} 127.0.0.1",
        ]
        if users is None:
            lines.append("allow_anonymous true")
        else:
            password_file = self.workdir / "passwords"
            for number, (user, password) in enumerate(users.items()):
                create = ["-c"] if number == 0 else []
                subprocess.run([MOSQUITTO_PASSWD, "-b", *create, str(password_file), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        if tls is not None:
            assert ca is not None, "a TLS listener needs the CA file too"
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {ca}", f"certfile {tls.cert}",
                      f"keyfile {tls.key}", f"require_certificate {'true' if require_client_cert else 'false'}"]
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running, "broker already running"
        self._process = subprocess.Popen([MOSQUITTO, "-c", str(self._config)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        for port in filter(None, [self.port, self.tls_port]):
            while not self._accepts(port):
                if self._process.poll() is not None:
                    stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RuntimeError(f"mosquitto exited at start: {stderr}\n{self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {port}\n{self.log()}")
                time.sleep(0.02)

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the broker the way systemd would (SIGTERM); it saves persistence and closes every client."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            self._process.send_signal(signal.SIGCONT)  # in case it was paused
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def pause(self) -> None:
        """Freeze the broker: connections stay open but nothing is read or acknowledged."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscriber:
    """A paho client that records every message it receives, for assertions in async tests.

    Messages are appended on the event loop thread, so tests can read `messages` directly.
    With `clean_session=False` it reconnects by itself and the broker keeps its subscriptions
    (and, on a persistent broker, queues messages for it while it is away).
    """

    def __init__(self, port: int, topics: list[str], *, clean_session: bool = True,
                 client_id: str | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._port = port
        self._topics = topics
        self.messages: list[Received] = []
        self._changed = asyncio.Event()
        self._subscribed = asyncio.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                                  clean_session=clean_session)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    async def start(self) -> None:
        """Connect and return once the broker has confirmed the subscriptions."""
        self.client.connect("127.0.0.1", self._port, keepalive=30)
        self.client.loop_start()
        async with asyncio.timeout(WAIT):
            await self._subscribed.wait()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # Break the client <-> callbacks cycle so paho frees its socket pair now, not in a later GC pass.
        self.client.on_connect = self.client.on_subscribe = self.client.on_message = None

    def local_port(self) -> int:
        """The local TCP port of this client's connection (to tell it apart from others to the broker)."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        port: int = sock.getsockname()[1]
        return port

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    async def wait_for(self, condition: Callable[[list[Received]], bool], what: str = "messages") -> None:
        """Wait until `condition(messages)` holds; woken by each message, no polling."""
        try:
            await woken_until(self._changed, lambda: condition(self.messages))
        except TimeoutError:
            received = [(m.topic, m.payload[:80]) for m in self.messages[-10:]]
            raise AssertionError(f"timed out waiting for {what}; {len(self.messages)} received, "
                                 f"last ones: {received}") from None

    async def wait_count(self, count: int, topic: str | None = None) -> list[Received]:
        """Wait for at least `count` messages (on `topic`, if given) and return them."""
        def matching(messages: list[Received]) -> list[Received]:
            return [m for m in messages if topic is None or m.topic == topic]

        await self.wait_for(lambda messages: len(matching(messages)) >= count,
                            f"{count} messages on {topic or 'any topic'}")
        return matching(self.messages)

    # paho's thread -> event loop

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason: object, properties: object) -> None:
        if not flags.session_present:
            client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reasons: object, properties: object) -> None:
        self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received = Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        self._loop.call_soon_threadsafe(self._record, received)

    def _record(self, received: Received) -> None:
        self.messages.append(received)
        self._changed.set()


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, server certificates for the right and a wrong host name, and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: str | None = None) -> None:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption())
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           encryption))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("municipal-gateway test CA")).issuer_name(name("municipal-gateway test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, names: list[x509.GeneralName], usage: x509.ObjectIdentifier,
              password: str | None = None) -> CertAndKey:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(stem)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files = CertAndKey(directory / f"{stem}.pem", directory / f"{stem}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, files.key, password)
        return files

    server_names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    client_key_password = "client-key-secret"
    return TlsFiles(
        ca=ca_path,
        server=issue("server", server_names, ExtendedKeyUsageOID.SERVER_AUTH),
        wrong_name=issue("wrong-name", [x509.DNSName("wrong.example")], ExtendedKeyUsageOID.SERVER_AUTH),
        client=issue("client", [x509.DNSName("gateway.test")], ExtendedKeyUsageOID.CLIENT_AUTH,
                     client_key_password),
        client_key_password=client_key_password,
    )
