"""A real S3-compatible HTTP server on loopback (moto's server mode) for the storage tests.

``s3_server()`` starts it on a free port, sets the standard AWS_* environment (endpoint, dummy
credentials) in this process, creates a bucket and yields ``(base_uri, env)``; ``env`` is what Ray
nodes started for the test must also get. Everything is undone afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os


@contextlib.contextmanager
def s3_server(bucket: str = "rc-test"):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _clear_fs_caches()
    try:
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/rc", env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_fs_caches()
        server.stop()


def _clear_fs_caches() -> None:
    """Filesystems built before the endpoint changed must not be reused."""
    import s3fs

    from raycluster.store import storage

    s3fs.S3FileSystem.clear_instance_cache()
    storage._fs.cache_clear()


def s3_keys(env: dict, bucket: str = "rc-test", prefix: str = "") -> list[str]:
    """Every key in the bucket under ``prefix``, read with boto3 (not through the code under test)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return sorted(out)
        token = page["NextContinuationToken"]
