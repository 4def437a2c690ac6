"""An asyncssh SFTP server on loopback for the EDI SFTP transport's tests: its own port, its
own folder (the SFTP root), a host key and a client key generated here, a password, and
one-shot faults (drop the connection while a file is read or written)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import asyncssh

from tests.support.processes import free_port

USER = "distco"
PASSWORD = "s3cret-pw"


class LoopbackSftp:
    def __init__(self, root: Path, keys: Path) -> None:
        self.root = root
        self.port = free_port()
        keys.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key_path = keys / "client_ed25519"
        client_key.write_private_key(str(self.client_key_path))
        self.other_key_path = keys / "stranger_ed25519"
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(self.other_key_path))
        self.known_hosts = keys / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} "
            + host_key.export_public_key().decode().strip() + "\n")
        self._host_key = host_key
        self._authorized = asyncssh.import_authorized_keys(
            client_key.export_public_key().decode())
        #: One-shot faults: "read" or "write" (drop the connection during it), with the
        #: folder whose file it hits.
        self.fault: tuple[str, str] | None = None
        self.faults_fired: list[str] = []
        self.logins = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._acceptor = None

    # -------------------------------------------------------------- life

    def start(self) -> LoopbackSftp:
        self._thread.start()
        self._acceptor = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self):
        server = self

        class Auth(asyncssh.SSHServer):
            def connection_made(self, conn):
                server.logins += 1

            def begin_auth(self, username):
                return True

            def password_auth_supported(self):
                return True

            def validate_password(self, username, password):
                return username == USER and password == PASSWORD

            def public_key_auth_supported(self):
                return True

            def validate_public_key(self, username, key):
                return username == USER and server._authorized.validate(
                    key, "127.0.0.1", "127.0.0.1") is not None

        class Sftp(asyncssh.SFTPServer):
            def __init__(self, chan):
                super().__init__(chan, chroot=str(server.root))

            def _maybe_drop(self, op, file_obj):
                fault = server.fault
                name = os.fsdecode(file_obj.name)
                if fault and fault[0] == op and f"/{fault[1]}/" in name:
                    server.fault = None
                    server.faults_fired.append(f"{op}:{Path(name).name}")
                    self.connection.abort()
                    raise asyncssh.SFTPConnectionLost("dropped by the test")

            def read(self, file_obj, offset, size):
                self._maybe_drop("read", file_obj)
                return super().read(file_obj, offset, size)

            def write(self, file_obj, offset, data):
                self._maybe_drop("write", file_obj)
                return super().write(file_obj, offset, data)

        return await asyncssh.create_server(
            Auth, "127.0.0.1", self.port, server_host_keys=[self._host_key],
            sftp_factory=Sftp, allow_scp=False)

    # -------------------------------------------------------------- a profile's sftp table

    def settings(self, **overrides) -> dict:
        data = {"host": "127.0.0.1", "port": self.port, "user": USER,
                "key_path": str(self.client_key_path), "known_hosts": str(self.known_hosts),
                "timeout_s": 5.0}
        data.update(overrides)
        return data
