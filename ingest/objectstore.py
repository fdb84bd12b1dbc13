"""Objects in S3 (or an S3-compatible store): locations, GDAL's settings, listing, moving, tagging.

Pixels are never fetched here: rasters are read by GDAL itself (``/vsis3/``) through
``ingest.rasters.open_raster``, with windowed range requests, so a Cloud-Optimized GeoTIFF is
never downloaded whole. This module does the bookkeeping GDAL does not: paginated listing of a
delivery prefix, and recording each object's outcome (copied to ``done/`` / ``failed/`` with a
reason object, or tagged in place), through boto3.

Every failure of the store is an :class:`ObjectStoreError` (not this object's fault: the
watcher retries) or, for one object that is missing or unreadable, an ``InputError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from groundwatch.settings import Settings
from ingest.errors import IngestError, InputError

SCHEME = "s3://"


class ObjectStoreError(IngestError):
    """The object store refused or failed (credentials, endpoint, bucket): not an object's fault."""


@dataclass(frozen=True)
class S3Location:
    """``s3://bucket/key``; a key ending in ``/`` (or empty) is a prefix."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        """The last part of the key (a file name)."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    @property
    def vsi(self) -> str:
        """The path GDAL reads it by."""
        return f"/vsis3/{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Location:
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Location(self.bucket, base + name)

    def sibling(self, name: str) -> S3Location:
        """A key next to this one (a relative STAC href, say); ``..`` parts are resolved."""
        parts = self.key.split("/")[:-1]
        for part in name.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return S3Location(self.bucket, "/".join(parts))


def is_s3(location: object) -> bool:
    return isinstance(location, str) and location.startswith(SCHEME)


def parse(url: str) -> S3Location:
    """``s3://bucket/key`` to a location; InputError says what a valid one looks like."""
    if not is_s3(url):
        raise InputError(f"{url!r} is not an s3:// URL; write s3://bucket/key")
    rest = url[len(SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(f"{url!r} names no bucket; write s3://bucket/key")
    return S3Location(bucket, key)


def _endpoint(settings: Settings) -> tuple[str, bool]:
    """(host[:port], https) of the configured endpoint, ("", True) for AWS itself."""
    if not settings.s3_endpoint:
        return "", True
    u = urlsplit(settings.s3_endpoint)
    return u.netloc, u.scheme == "https"


def gdal_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``rasterio.Env`` for /vsis3/: GDAL options and an AWS session.

    Credentials travel in a ``rasterio.session.AWSSession`` (rasterio refuses them as plain
    options). A custom endpoint gets path-style requests (``bucket`` in the path, as
    S3-compatible stores expect) and, for http://, no TLS. Without credentials GDAL's own chain
    applies (~/.aws, an instance role); anonymous access is never assumed.
    """
    opts: dict[str, Any] = {
        # A directory listing per open would cost a LIST request per scene: not needed to read it.
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    if settings.s3_region:
        opts["AWS_REGION"] = settings.s3_region
    host, https = _endpoint(settings)
    if host:
        opts["AWS_S3_ENDPOINT"] = host
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
        opts["AWS_HTTPS"] = "YES" if https else "NO"
    if settings.s3_access_key_id:
        from rasterio.session import AWSSession

        opts["session"] = AWSSession(
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            aws_session_token=settings.s3_session_token or None,
            region_name=settings.s3_region or None,
            endpoint_url=host or None,
        )
    return opts


def client(settings: Settings) -> Any:
    """A boto3 S3 client configured like GDAL (same endpoint, credentials, region)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - boto3 is a dependency
        raise ObjectStoreError("s3:// needs boto3: pip install boto3") from e
    kwargs: dict[str, Any] = {
        "region_name": settings.s3_region or "us-east-1",
        "config": Config(
            s3={"addressing_style": "path" if settings.s3_endpoint else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    }
    if settings.s3_endpoint:
        kwargs["endpoint_url"] = settings.s3_endpoint
    if settings.s3_access_key_id:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key
        kwargs["aws_session_token"] = settings.s3_session_token or None
    return boto3.client("s3", **kwargs)


def explain(e: BaseException, what: str) -> ObjectStoreError | InputError:
    """A boto3/botocore failure as our error: the store's (retry later) or the object's."""
    code = ""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "404", "NotFound"):
        return InputError(
            f"{what}: no such object; check the key (it may have been moved to done/ or failed/)"
        )
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
        return ObjectStoreError(
            f"{what}: the object store refused the credentials ({code}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or GROUNDWATCH_S3_ACCESS_KEY_ID/_SECRET_ACCESS_KEY) to a key allowed to "
            "read (and, for watch, write) this bucket"
        )
    if code == "NoSuchBucket":
        return ObjectStoreError(f"{what}: no such bucket; check the bucket name and the endpoint/region")
    return ObjectStoreError(
        f"{what}: the object store failed ({type(e).__name__}: {e}); check the endpoint "
        "(GROUNDWATCH_S3_ENDPOINT / AWS_ENDPOINT_URL), the region and the network"
    )


@dataclass(frozen=True)
class ObjectInfo:
    location: S3Location
    size: int
    modified: datetime
    etag: str


def list_objects(
    s3: Any, prefix: S3Location, *, page_size: int = 1000, recursive: bool = False
) -> Iterator[ObjectInfo]:
    """Every object under the prefix, page by page (a delivery prefix can hold thousands).

    Not recursive by default: keys in "sub-folders" (``done/``, ``failed/``, a contact's own
    prefix) are left out, as a drop folder's sub-directories are.
    """
    kwargs: dict[str, Any] = {
        "Bucket": prefix.bucket,
        "Prefix": prefix.key,
        "PaginationConfig": {"PageSize": page_size},
    }
    if not recursive:
        kwargs["Delimiter"] = "/"
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", ()):
                yield ObjectInfo(
                    S3Location(prefix.bucket, obj["Key"]),
                    int(obj["Size"]),
                    obj["LastModified"],
                    str(obj.get("ETag", "")).strip('"'),
                )
    except Exception as e:
        raise explain(e, f"listing {prefix}") from e


def head(s3: Any, loc: S3Location) -> ObjectInfo:
    try:
        h = s3.head_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as e:
        raise explain(e, str(loc)) from e
    return ObjectInfo(loc, int(h["ContentLength"]), h["LastModified"], str(h.get("ETag", "")).strip('"'))


def read_bytes(s3: Any, loc: S3Location, limit: int) -> bytes:
    """A small object's bytes (a STAC item); InputError when it is larger than `limit`."""
    info = head(s3, loc)
    if info.size > limit:
        raise InputError(f"{loc}: {info.size} bytes, more than the {limit} accepted for a JSON document")
    try:
        body: bytes = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read(limit + 1)
    except Exception as e:
        raise explain(e, str(loc)) from e
    return body


def put_text(s3: Any, loc: S3Location, text: str, content_type: str = "text/plain") -> None:
    try:
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=text.encode(), ContentType=content_type)
    except Exception as e:
        raise explain(e, f"writing {loc}") from e


def move(s3: Any, src: S3Location, dest: S3Location) -> None:
    """Copy then delete (S3 has no rename); a crash between the two leaves both, and the
    scene marker makes the second ingest of the original a no-op."""
    try:
        s3.copy_object(Bucket=dest.bucket, Key=dest.key, CopySource={"Bucket": src.bucket, "Key": src.key})
        s3.delete_object(Bucket=src.bucket, Key=src.key)
    except Exception as e:
        raise explain(e, f"moving {src} to {dest}") from e


STATUS_TAG = "groundwatch-status"
REASON_TAG = "groundwatch-reason"


def tags(s3: Any, loc: S3Location) -> dict[str, str]:
    try:
        out = s3.get_object_tagging(Bucket=loc.bucket, Key=loc.key)
    except Exception as e:
        raise explain(e, f"reading the tags of {loc}") from e
    return {t["Key"]: t["Value"] for t in out.get("TagSet", ())}


def tag(s3: Any, loc: S3Location, status: str, reason: str = "") -> None:
    """Record an outcome on the object itself (S3 tag values hold at most 256 characters)."""
    tagset = [{"Key": STATUS_TAG, "Value": status}]
    if reason:
        safe = "".join(c if c.isalnum() or c in " +-=._:/@" else " " for c in reason)
        tagset.append({"Key": REASON_TAG, "Value": safe[:256]})
    try:
        s3.put_object_tagging(Bucket=loc.bucket, Key=loc.key, Tagging={"TagSet": tagset})
    except Exception as e:
        raise explain(e, f"tagging {loc}") from e
