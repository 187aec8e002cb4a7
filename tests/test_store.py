"""mllib.store contract tests, run against both the local backend and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import pytest

from mllib import store as mstore
from mllib.store import NotFound, StoreError


def test_round_trip_bytes_and_stream(any_store):
    s = any_store
    s.put_bytes("a/b/c.bin", b"hello")
    assert s.exists("a/b/c.bin")
    assert not s.exists("a/b/missing.bin")
    assert s.size("a/b/c.bin") == 5
    assert s.get_bytes("a/b/c.bin") == b"hello"
    with s.open("a/b/c.bin") as f:
        assert f.read(2) == b"he"
        assert f.read() == b"llo"
    s.put_stream("a/stream.bin", io.BytesIO(b"x" * 100_000))
    assert s.get_bytes("a/stream.bin") == b"x" * 100_000


def test_large_object_goes_multipart_and_round_trips(any_store, tmp_path):
    data = os.urandom(mstore.PART_SIZE + 12345)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    any_store.put_file("big/big.bin", src)
    assert any_store.size("big/big.bin") == len(data)
    out = tmp_path / "back.bin"
    assert any_store.get_file("big/big.bin", out) == len(data)
    assert out.read_bytes() == data
    info = next(any_store.list("big/"))
    assert any_store.checksum(info) == mstore.etag_of_file(src)


def test_list_with_sizes_and_prefix(any_store):
    for k, n in [("p/x/1", 1), ("p/x/2", 2), ("p/y/3", 3), ("q/4", 4), ("px", 5)]:
        any_store.put_bytes(k, b"z" * n)
    assert [(i.key, i.size) for i in any_store.list("p/")] == [("p/x/1", 1), ("p/x/2", 2), ("p/y/3", 3)]
    assert [i.key for i in any_store.list("p/x")] == ["p/x/1", "p/x/2"]
    assert [i.key for i in any_store.list("p")] == ["p/x/1", "p/x/2", "p/y/3", "px"]
    assert len(list(any_store.list())) == 5
    assert list(any_store.list("nothing/")) == []


def test_delete_and_missing_key(any_store):
    any_store.put_bytes("d/k", b"1")
    any_store.delete("d/k")
    assert not any_store.exists("d/k")
    any_store.delete("d/k")  # deleting twice is fine
    with pytest.raises(NotFound) as e:
        any_store.get_bytes("d/k")
    assert "d/k" in str(e.value)
    with pytest.raises(NotFound):
        any_store.size("d/k")


def test_invalid_keys_are_refused(any_store):
    for bad in ["../x", "a/../b", "", "a//b"]:
        with pytest.raises(StoreError):
            any_store.put_bytes(bad, b"1")


def test_a_listing_prefix_stays_in_the_store(any_store, tmp_path):
    """A prefix that climbs out ('../', 'a/../../') is refused as a key would be; on a local store it once walked
    the folders around the store and listed their files. "/" lists every key on both backends (S3 once listed none)."""
    (tmp_path / "beside-the-store.txt").write_text("not an object")
    any_store.put_bytes("a/k", b"1")
    for bad in ["../", "..", "a/../../", "./a/", "a//b"]:
        with pytest.raises(StoreError, match="invalid key"):
            list(any_store.list(bad))
    assert [i.key for i in any_store.list("")] == [i.key for i in any_store.list("/")] == ["a/k"]
    assert [i.key for i in any_store.list("a/")] == ["a/k"] and list(any_store.list("b/")) == []


class _FailingStream(io.RawIOBase):
    """Yields `good` bytes, then fails as a dropped connection would."""

    def __init__(self, good: int):
        self.left = good

    def readable(self):
        return True

    def readinto(self, b):
        if self.left <= 0:
            raise ConnectionResetError("source went away")
        n = min(len(b), self.left)
        b[:n] = b"y" * n
        self.left -= n
        return n


@pytest.mark.parametrize("good", [1000, mstore.PART_SIZE + 5000])
def test_failed_upload_leaves_nothing(any_store, good):
    """Small (one PUT) and multipart uploads that fail half-way leave no object under the final key."""
    any_store.put_bytes("keep/old", b"old")
    with pytest.raises(ConnectionResetError):
        any_store.put_stream("fail/obj", _FailingStream(good))
    assert not any_store.exists("fail/obj")
    assert list(any_store.list("fail/")) == []
    with pytest.raises(ConnectionResetError):
        any_store.put_stream("keep/old", _FailingStream(good))
    assert any_store.get_bytes("keep/old") == b"old"  # the previous version is intact
    if isinstance(any_store, mstore.S3Store):
        ups = any_store.client.list_multipart_uploads(Bucket=any_store.bucket).get("Uploads", [])
        assert [u["Key"] for u in ups if "fail" in u["Key"] or "keep" in u["Key"]] == []


def test_local_store_leaves_no_temp_files(local_store):
    with pytest.raises(ConnectionResetError):
        local_store.put_stream("t/x", _FailingStream(10))
    assert [p for p in local_store.root.rglob("*") if p.is_file()] == []


def _make_tree(root, n=30):
    for i in range(n):
        p = root / f"sub{i % 3}" / f"f{i:03d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(1000 + i))
    return root


def test_put_dir_skips_unchanged_and_get_dir(any_store, tmp_path):
    src = _make_tree(tmp_path / "src")
    r1 = any_store.put_dir(src, "tree", jobs=8)
    assert (r1.transferred, r1.skipped) == (30, 0)
    assert r1.bytes == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    r2 = any_store.put_dir(src, "tree", jobs=8)
    assert (r2.transferred, r2.skipped) == (0, 30)
    # same size, different content: re-uploaded
    f = src / "sub0" / "f000.jpg"
    f.write_bytes(bytes(b ^ 0xFF for b in f.read_bytes()))
    r3 = any_store.put_dir(src, "tree", jobs=8)
    assert (r3.transferred, r3.skipped) == (1, 29)
    assert any_store.get_bytes("tree/sub0/f000.jpg") == f.read_bytes()

    dst = tmp_path / "dst"
    g1 = any_store.get_dir("tree", dst, jobs=8)
    assert (g1.transferred, g1.skipped) == (30, 0)
    for p in src.rglob("*.jpg"):
        assert (dst / p.relative_to(src)).read_bytes() == p.read_bytes()
    g2 = any_store.get_dir("tree", dst, jobs=8)
    assert (g2.transferred, g2.skipped) == (0, 30)
    (tmp_path / "a-file").write_bytes(b"kept")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        any_store.get_dir("tree", tmp_path / "a-file")
    assert (tmp_path / "a-file").read_bytes() == b"kept"


def test_url_for(local_store, s3_store):
    assert s3_store.url_for("a/b") == f"s3://{s3_store.bucket}/a/b"
    assert local_store.url_for("a/b") == str(local_store.root / "a" / "b")


def test_s3_prefix_store(s3_bucket):
    s = mstore.connect(f"s3://{s3_bucket}/some/prefix")
    s.put_bytes("k", b"v")
    raw = mstore.connect(f"s3://{s3_bucket}")
    assert raw.get_bytes("some/prefix/k") == b"v"
    assert [i.key for i in s.list()] == ["k"]


def test_default_store_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLLIB_STORE", str(tmp_path / "envstore"))
    s = mstore.connect()
    assert isinstance(s, mstore.LocalStore) and s.root == (tmp_path / "envstore").resolve()
    monkeypatch.delenv("MLLIB_STORE")
    monkeypatch.chdir(tmp_path)
    assert mstore.connect().root == (tmp_path / "store").resolve()


def test_wrong_credentials_give_clear_error_without_secret(s3_server, s3_bucket, monkeypatch):
    secret = "WRONGsecretVALUE1234567890"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(StoreError) as e:
        mstore.connect(f"s3://{s3_bucket}")
    msg = str(e.value)
    assert "credentials" in msg and f"s3://{s3_bucket}" in msg
    assert secret not in msg and s3_server.secret_key not in msg


def test_a_developers_aws_settings_do_not_redirect_the_test_server(s3_server, s3_bucket, monkeypatch):
    """Shell exports that would send the server's keys elsewhere (AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL)
    or sign differently (a session token, a profile that does not exist here) are overridden inside environment(),
    in this process and in the scripts it starts, and are back afterwards."""
    from mllib.testing.seaweed import free_port

    theirs = {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{free_port()}", "AWS_PROFILE": "mllib-no-such-profile",
              "AWS_SESSION_TOKEN": "not-a-token", "AWS_MAX_ATTEMPTS": "1"}
    for k, v in theirs.items():
        monkeypatch.setenv(k, v)
    with s3_server.environment():
        s = mstore.connect(f"s3://{s3_bucket}")
        s.put_bytes("dev/k", b"v")
        assert s.get_bytes("dev/k") == b"v"
        code = ("import sys; from mllib import store; "
                f"sys.exit(store.connect('s3://{s3_bucket}').get_bytes('dev/k') != b'v')")
        assert subprocess.run([sys.executable, "-c", code], env=dict(os.environ), timeout=120).returncode == 0
    assert {k: os.environ.get(k) for k in theirs} == theirs


def test_the_suite_ignores_the_developers_settings():
    """conftest.py drops the shell's AWS_*, MLLIB_* and CITYSCAPES_* settings and points boto3 at no ~/.aws files;
    what is left is the test server's (once a test has started it), on 127.0.0.1."""
    server = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
    leaked = [k for k in os.environ if k.startswith(("AWS_", "CITYSCAPES_", "MLLIB_"))
              and k not in {"MLLIB_SHARED_DATA", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", *server}]
    assert leaked == []
    assert os.environ["AWS_CONFIG_FILE"] == os.environ["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull
    assert os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:").startswith("http://127.0.0.1:")


def test_missing_bucket_gives_clear_error(s3_server):
    with pytest.raises(StoreError) as e:
        mstore.connect("s3://no-such-bucket-mllib")
    assert "does not exist" in str(e.value) and "no-such-bucket-mllib" in str(e.value)


def test_unreachable_endpoint(monkeypatch):
    from mllib.testing.seaweed import free_port

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s = mstore.S3Store("s3://b", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError) as e:
        s.check()
    assert "cannot reach" in str(e.value) and "AWS_ENDPOINT_URL" in str(e.value)


def test_s3_store_survives_pickle_and_fork(s3_store):
    s3_store.put_bytes("fork/k", b"v")
    clone = pickle.loads(pickle.dumps(s3_store))
    assert clone.get_bytes("fork/k") == b"v"
    parent_client = s3_store.client
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must build its own client and still work
        try:
            ok = s3_store.client is not parent_client and s3_store.get_bytes("fork/k") == b"v"
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"


def test_script_error_is_one_line_and_nonzero(tmp_path):
    """A script given an unreachable store exits non-zero with one line and no traceback."""
    from mllib.testing.seaweed import free_port

    secret = "sEcReT" + "9" * 30
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="a",
               AWS_SECRET_ACCESS_KEY=secret, AWS_MAX_ATTEMPTS="1", AWS_DEFAULT_REGION="us-east-1")
    p = subprocess.run([sys.executable, "-m", "mllib.storecli", "--store", "s3://bucket", "ls"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 75
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert "cannot reach" in p.stderr and "s3://bucket" in p.stderr
    assert secret not in p.stderr + p.stdout


def test_fast_put_path_and_fallback_errors(s3_store, monkeypatch):
    s3_store.put_bytes("fast/a", b"1" * 1000)
    fp = s3_store.fast_put
    assert fp._conn.made and fp._failures == 0 and fp.active  # the signed fast PUT was used
    assert s3_store.get_bytes("fast/a") == b"1" * 1000
    # rejected credentials: the fast PUT fails, boto3 repeats it and explains, without the secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-abcdef")
    fp._conn.reset()  # both clients made again, with the changed environment
    s3_store._client.reset()
    with pytest.raises(StoreError) as e:
        s3_store.put_bytes("fast/b", b"2")
    assert "credentials" in str(e.value) and "wrong-secret-abcdef" not in str(e.value)
    assert fp._failures == 1
    for _ in range(2):
        with pytest.raises(StoreError):
            s3_store.put_bytes("fast/b", b"2")
    assert not fp.active  # off after 3 failures in a row: boto3 alone from then on
    monkeypatch.undo()
    fp._conn.reset()  # both clients made again, with the changed environment
    s3_store._client.reset()
    assert not s3_store.exists("fast/b")


def test_fast_get_reads_the_object_and_leaves_errors_to_boto3(s3_store, s3_bucket):
    data = bytes(range(256)) * 300
    s3_store.put_bytes("fast/g", data)
    fp = s3_store.fast_put
    assert fp.get(s3_store._k("fast/g")) == data  # the signed GET itself returns the bytes
    assert s3_store.get_bytes("fast/g") == data and fp._failures == 0
    assert fp.get(s3_store._k("fast/missing")) is None and fp._failures == 0  # a 404 is no failure of the path
    with pytest.raises(mstore.NotFound, match="fast/missing"):
        s3_store.get_bytes("fast/missing")  # boto3 names what is missing
    off = mstore.S3Store(f"s3://{s3_bucket}", fast_put=False)
    assert off.get_bytes("fast/g") == data and off.fast_put.get("fast/g") is None


def test_fast_put_off_switch(s3_bucket, monkeypatch):
    off = mstore.S3Store(f"s3://{s3_bucket}", fast_put=False)
    off.put_bytes("x/a", b"1")
    assert off.get_bytes("x/a") == b"1" and not off.fast_put._conn.made  # boto3 only
    monkeypatch.setenv("MLLIB_FAST_PUT", "0")
    env_off = mstore.S3Store(f"s3://{s3_bucket}")
    env_off.put_bytes("x/b", b"2")
    assert not env_off.fast_put._conn.made and not env_off.fast_put.active


@pytest.mark.s3
def test_the_test_server_holds_objects_in_many_buckets(tmp_path):
    """Every bucket is a SeaweedFS collection with volumes of its own: with weed's default growth (7 volumes at a
    time) -volume.max=200 is spent after 28 buckets that hold an object, and the next PutObject is an InternalError.
    The suite makes more buckets than that in one server; SeaweedS3 grows one volume at a time."""
    from mllib.testing.seaweed import SeaweedS3

    n = 30
    with SeaweedS3(tmp_path / "sw") as server:
        c = server.client()
        for i in range(n):
            c.create_bucket(Bucket=f"many-{i:02d}")
            c.put_object(Bucket=f"many-{i:02d}", Key="k", Body=b"%d" % i)
        assert [c.get_object(Bucket=f"many-{i:02d}", Key="k")["Body"].read() for i in range(n)] == \
            [b"%d" % i for i in range(n)]


@pytest.mark.parametrize("url, key, token, extra", [
    ("http://127.0.0.1:8333", "bkt/datasets/own/masks/a b+c=d%e,ü.png", None, {}),
    ("https://bkt.s3.eu-west-1.amazonaws.com", "images/x~y(1).jpg", "session-token/+=", {}),
    ("https://s3.example.org:9000", "bkt/k", None, {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
                                                   "Content-Type": "application/octet-stream"}),
    ("http://127.0.0.1:8333", "bkt", None, {"query": {"list-type": "2", "prefix": "own/a b+c=d&e/ü",
                                                      "continuation-token": "tok/+=="}}),
])
def test_the_fast_paths_signature_is_botocores(monkeypatch, url, key, token, extra):
    """The fast path's SigV4 (the day's signing key kept) signs exactly what botocore's S3SigV4Auth signs, for path-
    and virtual-hosted endpoints, a session token, headers of a PUT, and keys that need URI encoding."""
    import datetime
    from urllib.parse import quote, urlsplit

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from mllib.store.fastput import _EMPTY_SHA256, Signer, canonical_query

    now = datetime.datetime(2026, 12, 6, 23, 59, 59, tzinfo=datetime.UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now.replace(tzinfo=None))
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token).get_frozen_credentials()
    path = "/" + quote(key, safe="/~")
    params = extra.pop("query", None) if "query" in extra else None
    query = canonical_query(params) if params else ""
    req = AWSRequest(method="PUT" if extra else "GET", url=url + path + (f"?{query}" if query else ""),
                     headers={"x-amz-content-sha256": _EMPTY_SHA256, **extra})
    botocore.auth.S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(req)
    signer = Signer("eu-west-1")
    for _ in range(2):  # the second with the kept signing key
        mine = signer.headers(creds, req.method, urlsplit(url).netloc.removesuffix(":443"), path, _EMPTY_SHA256,
                              extra, now=now, query=query)
        assert mine["Authorization"] == req.headers["Authorization"]
        assert mine["x-amz-date"] == req.headers["X-Amz-Date"]
        assert mine.get("x-amz-security-token") == req.headers.get("X-Amz-Security-Token")


def test_fast_get_and_put_of_keys_that_need_encoding(s3_store):
    """Keys with spaces, '+', '=', '%' and non-ASCII go through the fast path itself (the server accepts its
    signature: no fall-back to boto3) and read back byte for byte, listed under their own names."""
    fp = s3_store.fast_put
    keys = ["odd/a b+c=d%e,ü.png", "odd/x~y(1)&$@!.jpg"]
    for i, k in enumerate(keys):
        assert fp.put(s3_store._k(k), bytes([i]) * 300)
        assert fp.get(s3_store._k(k)) == bytes([i]) * 300
    assert fp._failures == 0
    assert sorted(o.key for o in s3_store.list("odd/")) == sorted(keys)


# -- the fast GET's own keep-alive HTTP/1.1 connections ---------------------------------------------------------------
def test_fast_get_keeps_its_connection_and_reads_ranges(s3_store):
    """Many GETs from one thread go over one kept connection; a ranged GET (get_head) takes the fast path too, and a
    range past the end gives the whole object."""
    data = os.urandom(70_000)  # longer than one recv
    s3_store.put_bytes("keep/a", data)
    fp = s3_store.fast_put
    for _ in range(30):
        assert fp.get(s3_store._k("keep/a")) == data
    http = fp._conn.get().http
    assert len(http._idle) == 1 and fp._failures == 0
    first = http._idle[0]
    assert fp.get(s3_store._k("keep/a"), first=10) == data[:10]
    assert http._idle == [first]  # the same socket again
    assert s3_store.get_head("keep/a", 100) == data[:100]
    assert fp.get(s3_store._k("keep/a"), first=10**6) == data
    assert fp._failures == 0


def _crafted_store(monkeypatch, url):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key-for-the-test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return mstore.S3Store("s3://b", endpoint_url=url)


def test_fast_get_reads_only_answers_it_understands(monkeypatch):
    """Against a crafted server: a body without Content-Length (chunked), a body cut short, an error status and a
    404 give None (boto3 then repeats the request and explains); only the first three count as failures of the path;
    the request is signed and a range is sent as a Range header."""
    from .crafted import Crafted

    answers = [
        (200, {"Transfer-Encoding": "chunked", "Content-Length": None}, b"5\r\nhello\r\n0\r\n\r\n"),
        (200, {}, b"x" * 1000, 10),  # cut after 10 bytes, the connection closed
        (503, {}, b"<Error><Code>SlowDown</Code></Error>"),
        (404, {}, b"<Error><Code>NoSuchKey</Code></Error>"),
        (206, {}, b"0123456789"),
        (200, {"Connection": "close"}, b"whole"),
    ]
    seen = []

    def respond(h, n):
        seen.append(dict(h.headers))
        return answers[n]

    with Crafted(respond) as srv:
        fp = _crafted_store(monkeypatch, srv.url).fast_put
        assert fp.get("odd key/ü") is None and fp._failures == 1
        assert fp.get("k") is None and fp._failures == 2
        assert fp.get("k") is None and fp._failures == 3
        fp._failures = 0
        assert fp.get("k") is None and fp._failures == 0  # a 404: boto3 names what is missing
        assert fp.get("k", first=10) == b"0123456789"
        assert fp.get("k") == b"whole"
        assert fp._conn.get().http._idle == []  # "Connection: close": not kept
    assert srv.requests[0][1] == "/b/odd%20key/%C3%BC"
    assert all(h["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=k/") for h in seen)
    assert "secret-key-for-the-test" not in repr(seen)
    assert srv.requests[4][2] == "bytes=0-9" and srv.requests[5][2] is None


def test_fast_get_replaces_a_connection_the_server_closed(monkeypatch):
    """A kept connection that the server closed meanwhile (its keep-alive timeout, no word said) is replaced by a new
    one for the same request, which is not counted as a failure."""
    from .crafted import Crafted

    def respond(h, n):
        h.close_connection = True  # the server closes after answering, without "Connection: close"
        return 200, {}, b"answer %d" % n

    with Crafted(respond) as srv:
        fp = _crafted_store(monkeypatch, srv.url).fast_put
        assert fp.get("k") == b"answer 0"
        assert len(fp._conn.get().http._idle) == 1  # kept: nothing said it would close
        import time

        time.sleep(0.2)  # the server's close arrives
        assert fp.get("k") == b"answer 1"
        assert fp._failures == 0 and len(srv.requests) == 2


def test_fast_get_over_tls_verifies_the_server(tmp_path, monkeypatch):
    """https: the fast GET trusts the server only through the store's CA bundle (AWS_CA_BUNDLE here); without it the
    handshake fails and it gives None (boto3 then fails the same way and says so); verify=False reads it."""
    import urllib3

    from .crafted import tls

    srv, url, cert = tls(lambda h, n: (200, {}, b"over tls %d" % n), tmp_path)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    with srv:
        untrusted = _crafted_store(monkeypatch, url).fast_put
        assert untrusted.get("k") is None and untrusted._failures == 1
        assert not untrusted.put("k", b"x") and untrusted._failures == 2  # the PUTs' pool: the same TLS context
        monkeypatch.setenv("AWS_CA_BUNDLE", str(cert))
        trusted = _crafted_store(monkeypatch, url).fast_put
        assert trusted.get("k") == b"over tls 0" and trusted.get("k") == b"over tls 1"
        assert len(trusted._conn.get().http._idle) == 1
        assert trusted.put("k", b"x") and trusted._failures == 0
        monkeypatch.delenv("AWS_CA_BUNDLE")
        off = mstore.S3Store("s3://b", endpoint_url=url, verify=False).fast_put
        assert off.get("k") == b"over tls 3"
        with pytest.warns(urllib3.exceptions.InsecureRequestWarning):  # as boto3 warns when not verifying
            assert off.put("k", b"y")


def test_s3_listing_leaves_timestamps_unparsed(s3_store):
    """The S3 client keeps a listing's LastModified as the string sent (no dateutil per key, two thirds of a
    listing's CPU); the listing's keys, sizes and ETags are unchanged by it."""
    import hashlib

    for i in range(3):
        s3_store.put_bytes(f"ts/{i}", b"x" * (i + 1))
    page = s3_store.client.list_objects_v2(Bucket=s3_store.bucket, Prefix=s3_store._k("ts/"))
    stamp = page["Contents"][0]["LastModified"]
    assert isinstance(stamp, str) and stamp[:2] == "20"
    got = [(o.key, o.size, o.etag) for o in s3_store.list("ts/")]
    assert got == [(f"ts/{i}", i + 1, hashlib.md5(b"x" * (i + 1)).hexdigest()) for i in range(3)]


def test_list_pages_are_read_from_s3s_answer():
    """The fast listing's reader: keys with XML entities and character references, ETags in quotes, the token of a
    truncated page; an error answer or a truncated page without a token is a ValueError (boto3 then lists)."""
    from mllib.store.fastput import parse_list_page

    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>"
            b"<IsTruncated>true</IsTruncated><NextContinuationToken>tok/+=&amp;1</NextContinuationToken>"
            b"<Contents><Key>p/a &amp; b&lt;c&gt;&#x1;\xc3\xbc.png</Key><LastModified>2026-12-07T00:00:00.000Z"
            b"</LastModified><ETag>&quot;0123abcd&quot;</ETag><Size>17</Size><StorageClass>STANDARD</StorageClass>"
            b'</Contents><Contents><Key>p/x.jpg</Key><ETag>"99"</ETag><Size>0</Size></Contents></ListBucketResult>')
    items, token = parse_list_page(body)
    assert items == [("p/a & b<c>\x01ü.png", 17, "0123abcd"), ("p/x.jpg", 0, "99")]
    assert token == "tok/+=&1"
    last = body.replace(b"<IsTruncated>true", b"<IsTruncated>false")
    assert parse_list_page(last)[1] is None
    with pytest.raises(ValueError):
        parse_list_page(body.replace(b"<NextContinuationToken>tok/+=&amp;1</NextContinuationToken>", b""))
    with pytest.raises(ValueError):
        parse_list_page(b"<Error><Code>AccessDenied</Code></Error>")


def test_fast_listing_equals_boto3s_and_boto3_takes_over_mid_listing(s3_store, s3_bucket, monkeypatch):
    """S3Store.list pages through the fast path's own signed LIST (no boto3 call at all), with keys that need
    encoding and a prefix that does, page after page; where a page fails, boto3 lists on from the same token."""
    keys = [f"li st/{i:02d} a&b+c=%ü<>.png" for i in range(7)] + ["li st/z", "li/st-other"]
    for k in keys:
        s3_store.put_bytes(k, k.encode())
    boto = mstore.S3Store(f"s3://{s3_bucket}", fast_put=False)
    want = [(o.key, o.size, o.etag) for o in boto.list("li st/")]
    assert [w[0] for w in want] == sorted(keys[:8])
    fp = s3_store.fast_put
    pages, token = [], None
    while True:  # the fast path's own pages, 3 keys each
        items, token = fp.list_page(s3_store._k("li st/"), token, max_keys=3)
        pages.append(items)
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2] and [k for p in pages for k, _, _ in p] == [w[0] for w in want]

    def no_boto(*a, **kw):
        raise AssertionError("boto3 listed")

    monkeypatch.setattr(s3_store.client, "list_objects_v2", no_boto)
    assert [(o.key, o.size, o.etag) for o in s3_store.list("li st/")] == want
    monkeypatch.undo()
    real, calls = fp.list_page, []

    def first_page_only(prefix, token=None, max_keys=None):
        calls.append(token)
        return real(prefix, token, max_keys=3) if len(calls) == 1 else None

    monkeypatch.setattr(fp, "list_page", first_page_only)
    assert [(o.key, o.size, o.etag) for o in s3_store.list("li st/")] == want  # 3 fast, the rest through boto3
    assert len(calls) == 2 and calls[1] is not None
