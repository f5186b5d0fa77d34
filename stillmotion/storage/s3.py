"""S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, Alibaba OSS's S3 API).

Objects live under ``s3://<bucket>/<prefix>/<key>``. Uploads of files above
``multipart_threshold`` go in parts of ``part_size`` (read from disk one part at a time);
downloads stream in chunks; nothing holds a whole video in memory. Credentials come from the
standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, the
shared files, instance roles) and are never logged. Needs the ``s3`` extra (aiobotocore).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from stillmotion.errors import NotFound
from stillmotion.storage.base import CHUNK_BYTES, StorageUnavailable, StoredObject, check_key
from stillmotion.storage.signing import UrlSigner

log = logging.getLogger("stillmotion.storage")

MIB = 1 << 20
#: S3's smallest part (every part but the last).
MIN_PART_SIZE = 5 * MIB
#: S3's longest presigned URL lifetime (SigV4).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_MISSING = {"NoSuchKey", "404", "NotFound"}
_PRESIGN_CACHE = 10_000


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket`` or ``s3://bucket/some/prefix``; anything else is refused."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StorageUnavailable(
            f"STILLMOTION_STORAGE_URL {url!r} is not s3://bucket or s3://bucket/prefix"
        )
    if "@" in parts.netloc or ":" in parts.netloc:
        raise StorageUnavailable(
            "STILLMOTION_STORAGE_URL names the bucket only (s3://bucket/prefix); credentials "
            "come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS profile, the endpoint "
            "from STILLMOTION_S3_ENDPOINT_URL"
        )
    prefix = parts.path.strip("/")
    if prefix and not check_key(prefix):
        raise StorageUnavailable(f"STILLMOTION_STORAGE_URL has an invalid prefix: {prefix!r}")
    return S3Location(parts.netloc, f"{prefix}/" if prefix else "")


def _client_error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Use ``await S3Storage.open(...)``: it checks the bucket before anything is served."""

    def __init__(
        self,
        location: S3Location,
        signer: UrlSigner,
        client: Any,
        stack: contextlib.AsyncExitStack,
        *,
        public: Literal["signed", "presigned"] = "signed",
        presigner: Any = None,
        url_ttl: int = 86400,
        multipart_threshold: int = 8 * MIB,
        part_size: int = 8 * MIB,
    ):
        self.location = location
        self.bucket = location.bucket
        self.signer = signer
        self.public = public
        self.multipart_threshold = multipart_threshold
        self.part_size = max(MIN_PART_SIZE, part_size)
        self._client = client
        self._stack = stack
        self._presigner = presigner
        self._url_ttl = url_ttl
        # presigned URLs are reused for a while, so repeated polls answer the same URL
        self._reuse = max(1, min(3600, url_ttl))
        self._presigned: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @classmethod
    async def open(
        cls,
        url: str,
        signer: UrlSigner,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        public: Literal["signed", "presigned"] = "signed",
        url_ttl: int = 86400,
        multipart_threshold: int = 8 * MIB,
        part_size: int = 8 * MIB,
        connect_timeout: float = 10.0,
    ) -> S3Storage:
        location = parse_s3_url(url)
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError:
            raise StorageUnavailable(
                "s3:// storage needs aiobotocore: pip install 'stillmotion[s3]'"
            ) from None
        options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "read_timeout": 60,
            "retries": {"max_attempts": 3, "mode": "standard"},
            # other S3-compatible stores do not all accept the newer default checksums
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        if endpoint_url:
            options["s3"] = {"addressing_style": "path"}
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=AioConfig(**options)
            )
        )
        presigner = None
        try:
            await _check_bucket(client, location.bucket, endpoint_url)
            if public == "presigned":
                presigner = await asyncio.to_thread(
                    _presigner, location.bucket, endpoint_url, region, options
                )
        except BaseException:
            await stack.aclose()
            raise
        where = f"{_safe(endpoint_url)} " if endpoint_url else ""
        log.info("storage: s3://%s/%s %s(%s URLs)", location.bucket, location.prefix, where, public)
        return cls(
            location,
            signer,
            client,
            stack,
            public=public,
            presigner=presigner,
            url_ttl=url_ttl,
            multipart_threshold=multipart_threshold,
            part_size=part_size,
        )

    # -- keys ----------------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        if not check_key(key):
            raise NotFound(f"no such file: {key}")
        return self.location.prefix + key

    def _prefix_key(self, prefix: str) -> str:
        prefix = prefix.strip("/")
        return self.object_key(prefix) + "/" if prefix else self.location.prefix

    # -- writing -------------------------------------------------------------------------

    async def put_bytes(self, key: str, data: bytes) -> int:
        await self._client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        return len(data)

    async def put_file(self, key: str, src: Path) -> int:
        name = self.object_key(key)
        size = (await asyncio.to_thread(src.stat)).st_size
        if size <= self.multipart_threshold:
            data = await asyncio.to_thread(src.read_bytes)
            await self._client.put_object(Bucket=self.bucket, Key=name, Body=data)
            return size
        await self._multipart(name, src)
        return size

    async def _multipart(self, name: str, src: Path) -> None:
        upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=name)
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            with src.open("rb") as fh:
                number = 1
                while chunk := await asyncio.to_thread(fh.read, self.part_size):
                    done = await self._client.upload_part(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"PartNumber": number, "ETag": done["ETag"]})
                    number += 1
            await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )
                )
            raise

    # -- reading -------------------------------------------------------------------------

    async def _get(self, key: str, **extra: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = await self._client.get_object(
                Bucket=self.bucket, Key=self.object_key(key), **extra
            )
        except Exception as exc:
            if _client_error_code(exc) in _MISSING:
                raise NotFound(f"no such file: {key}") from None
            raise
        return response

    async def stat(self, key: str) -> StoredObject:
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _client_error_code(exc) in _MISSING:
                raise NotFound(f"no such file: {key}") from None
            raise
        return StoredObject(
            size=int(head["ContentLength"]),
            modified=head["LastModified"].timestamp(),
            etag=head.get("ETag"),
        )

    async def fetch_to(self, key: str, dest: Path) -> Path:
        response = await self._get(key)
        part = dest.with_name(dest.name + ".part")
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        try:
            async with response["Body"] as body:
                with part.open("wb") as fh:
                    async for chunk in body.iter_chunks(CHUNK_BYTES):
                        await asyncio.to_thread(fh.write, chunk)
            await asyncio.to_thread(os.replace, part, dest)
        finally:
            part.unlink(missing_ok=True)
        return dest

    async def read_bytes(self, key: str) -> bytes:
        response = await self._get(key)
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def open_range(self, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        response = await self._get(key, Range=f"bytes={start}-{end}")
        return _Chunks(response["Body"])

    # -- URLs ----------------------------------------------------------------------------

    def signed_url(self, key: str, *, now: float | None = None) -> str:
        if self.public != "presigned" or self._presigner is None:
            return self.signer.url(key, now=now)
        current = time.time() if now is None else now
        cached = self._presigned.get(key)
        if cached is not None and current - cached[1] < self._reuse:
            self._presigned.move_to_end(key)
            return cached[0]
        # valid for at least url_ttl seconds however long the URL is reused
        expires_in = min(MAX_PRESIGN_SECONDS, self._url_ttl + self._reuse)
        url: str = self._presigner.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.object_key(key)},
            ExpiresIn=expires_in,
        )
        self._presigned[key] = (url, current)
        if len(self._presigned) > _PRESIGN_CACHE:
            self._presigned.popitem(last=False)
        return url

    def verify(self, key: str, expires: int, signature: str, *, now: float | None = None) -> bool:
        return self.signer.verify(key, expires, signature, now=now)

    # -- listing -------------------------------------------------------------------------

    async def list_files(self, prefix: str) -> list[tuple[str, float]]:
        found: list[tuple[str, float]] = []
        strip = len(self.location.prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix_key(prefix)):
            for item in page.get("Contents", []):
                found.append((item["Key"][strip:], item["LastModified"].timestamp()))
        return found

    async def delete_prefix(self, prefix: str) -> int:
        keys = [self.location.prefix + key for key, _ in await self.list_files(prefix)]
        for at in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
            batch = [{"Key": k} for k in keys[at : at + 1000]]
            await self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
        return len(keys)

    async def delete_keys(self, keys: list[str]) -> None:
        names = [self.object_key(key) for key in keys]
        for at in range(0, len(names), 1000):  # S3 deletes a missing key without complaint
            batch = [{"Key": k} for k in names[at : at + 1000]]
            await self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )

    async def aclose(self) -> None:
        await self._stack.aclose()
        if self._presigner is not None:
            self._presigner.close()


class _Chunks:
    """An object's body in chunks; ``aclose()`` releases the connection even when iteration
    never started (a client that left before the first byte)."""

    def __init__(self, body: Any):
        self._body = body
        self._chunks = body.iter_chunks(CHUNK_BYTES)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise
        return chunk

    async def aclose(self) -> None:
        closer = getattr(self._body, "aclose", None)  # async on both of aiobotocore's backends
        if closer is not None:
            await closer()
        else:
            self._body.close()


async def _check_bucket(client: Any, bucket: str, endpoint_url: str | None) -> None:
    """``head_bucket``: a missing bucket, refused access or an unreachable endpoint fails the
    start with a message naming the bucket and the endpoint (never a credential)."""
    where = f" at {_safe(endpoint_url)}" if endpoint_url else ""
    try:
        await client.head_bucket(Bucket=bucket)
    except Exception as exc:
        code = _client_error_code(exc)
        if code in {"404", "NoSuchBucket", "NotFound"}:
            reason = "the bucket does not exist"
        elif code in {"403", "AccessDenied", "Forbidden"}:
            reason = "access denied (check the AWS credentials and the bucket policy)"
        elif code:
            reason = f"the store answered {code}"
        elif type(exc).__name__ == "NoCredentialsError":
            reason = "no AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
        else:
            reason = f"unreachable ({type(exc).__name__})"
        raise StorageUnavailable(f"storage bucket {bucket!r}{where}: {reason}") from None


def _safe(endpoint_url: str | None) -> str:
    """The endpoint without any ``user:password@`` part, for messages."""
    parts = urlsplit(endpoint_url or "")
    if "@" not in parts.netloc:
        return endpoint_url or ""
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _presigner(
    bucket: str, endpoint_url: str | None, region: str | None, options: dict[str, Any]
) -> Any:
    """A plain botocore client for presigning (computed locally, no request is made). One URL
    is made here, so the credentials are resolved at start rather than on the event loop."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(**options, signature_version="s3v4"),
    )
    try:
        client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "x"})
    except BotoCoreError as exc:
        client.close()
        raise StorageUnavailable(
            f"storage bucket {bucket!r}: presigned URLs cannot be made ({type(exc).__name__})"
        ) from None
    return client
