"""Where photos come from and masks go: a local folder or an S3 prefix (``s3://bucket/prefix``).

Both are small picklable objects (Spark ships them to the executors): an S3 client is made where it is used,
from the endpoint and keys the driver resolved. Every write is atomic: a local file is written beside its
final name and renamed over it; an S3 object appears whole when its PUT ends. A reader therefore never sees
half a PNG or half a manifest, whatever kills a job.

Keys are paths relative to the root, with "/" separators, on both.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class Entry:
    """A file under a root: its key, size in bytes and modification time (ns since the epoch)."""

    key: str
    size: int
    modified_ns: int


@dataclass(frozen=True)
class LocalFolder:
    root: str

    def __str__(self) -> str:
        return self.root

    def path(self, key: str) -> Path:
        return Path(self.root, *key.split("/"))

    def exists(self) -> bool:
        return Path(self.root).is_dir()

    def list(self, prefix: str = "") -> list[Entry]:
        """Every file under ``prefix`` (a key prefix ending in "/", or "" for all), sorted by key."""
        start = self.path(prefix) if prefix else Path(self.root)
        found = []
        for path in sorted(start.rglob("*")):
            if path.is_file():
                stat = path.stat()
                found.append(Entry(path.relative_to(self.root).as_posix(), stat.st_size, stat.st_mtime_ns))
        return found

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        if path.parent != Path(self.root) and not any(path.parent.iterdir()):  # as on S3: no empty folders
            path.parent.rmdir()

    def is_inside(self, other) -> str | None:
        """The key prefix under ``other`` (a LocalFolder) that this folder is, or None when it is not under it."""
        if not isinstance(other, LocalFolder):
            return None
        mine, theirs = Path(self.root).resolve(), Path(other.root).resolve()
        if mine == theirs:
            return ""
        return mine.relative_to(theirs).as_posix() + "/" if mine.is_relative_to(theirs) else None


@dataclass(frozen=True)
class S3Settings:
    """What an S3 client needs, resolved on the driver from boto3's usual sources (AWS_* variables,
    ~/.aws): the executors of a cluster need no keys of their own."""

    endpoint_url: str | None
    key_id: str | None
    secret: str | None = field(repr=False)
    region: str

    @classmethod
    def from_environment(cls) -> S3Settings:
        import boto3

        session = boto3.Session()
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials else None
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            key_id=frozen.access_key if frozen else None,
            secret=frozen.secret_key if frozen else None,
            region=session.region_name or "us-east-1",
        )

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )


@dataclass(frozen=True)
class S3Prefix:
    bucket: str
    prefix: str  # "" or ending in "/"
    settings: S3Settings

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"

    def _client(self):
        # one client per process and settings: boto3 clients are not picklable, and cheap to keep
        key = (self.settings, os.getpid())
        if key not in _S3_CLIENTS:
            _S3_CLIENTS[key] = self.settings.client()
        return _S3_CLIENTS[key]

    def exists(self) -> bool:
        self._client().head_bucket(Bucket=self.bucket)  # raises with S3's own reason (no bucket, no access)
        return True

    def list(self, prefix: str = "") -> list[Entry]:
        found = []
        pages = (
            self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if key and not key.endswith("/"):
                    modified = int(item["LastModified"].timestamp() * 1e9)
                    found.append(Entry(key, int(item["Size"]), modified))
        return sorted(found, key=lambda entry: entry.key)

    def read(self, key: str) -> bytes:
        return self._client().get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self._client().put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def delete(self, key: str) -> None:
        self._client().delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def is_inside(self, other) -> str | None:
        if isinstance(other, S3Prefix) and other.bucket == self.bucket and self.prefix.startswith(other.prefix):
            return self.prefix[len(other.prefix) :]
        return None


_S3_CLIENTS: dict = {}


def open_location(location: str, settings: S3Settings | None = None) -> LocalFolder | S3Prefix:
    """``s3://bucket/prefix`` or a local folder (made absolute: executors have their own working directory)."""
    if location.startswith(S3_SCHEME):
        bucket, _, prefix = location[len(S3_SCHEME) :].partition("/")
        if not bucket:
            raise ValueError(f"{location}: no bucket; write s3://bucket/prefix")
        prefix = prefix.strip("/")
        return S3Prefix(bucket, prefix + "/" if prefix else "", settings or S3Settings.from_environment())
    return LocalFolder(str(Path(location).absolute()))


def unique_name() -> str:
    return uuid.uuid4().hex
