"""Fill a source's `text` from its `blob_id`: python-edu's Hub config ships blob ids only.

The smollm-corpus card reads each file from Software Heritage's S3 bucket, `s3://softwareheritage/content/<blob_id>`,
gzip-compressed, decoded as UTF-8 with errors ignored; so do we, many keys at once (s3fs `cat` gathers the requests on
its asyncio loop), retrying transient errors with exponential backoff, and keeping every text in a local cache keyed
by blob id so a second build reads no network.

The S3 endpoint and credentials come from the environment only (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION; unsigned requests when no credentials are
configured), and error messages we log or raise have any URL replaced by `<endpoint>`.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from doge_dagster.recipe_sections import BlobContents

log = logging.getLogger(__name__)

BLOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")  # a safe object key and file name
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s\"']+")
BACKOFF_BASE_S = 0.2  # first retry after 0.2 s, then 0.4, 0.8, ... (capped)
BACKOFF_MAX_S = 20.0
LOG_EVERY_ROWS = 10_000
WARN_FIRST_FAILURES = 10
CREDENTIAL_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the Software Heritage bucket accepts the credentials of any "
    "AWS account), or read a mirror that carries `text` instead (source `repo:` or kind: local)"
)


class BlobFetchError(RuntimeError):
    """Blob contents could not be read as the recipe's `contents` asks; the message names the blob and the fix."""


@dataclass
class BlobFetchStats:
    """Counts of one source's blobs, so a build can report (and a test can assert) what was read from where."""

    rows: int = 0  # rows that asked for a text
    fetched: int = 0  # texts read from the store
    cached: int = 0  # texts read from the local cache
    failed: int = 0  # blobs that could not be read (their rows dropped under on_error=skip)
    retried: int = 0  # requests repeated after a transient error
    last_failure: str | None = None  # "<blob_id>: <reason>" of the latest failure

    def summary(self) -> str:
        """One log line of the counts."""
        return (
            f"{self.rows} rows: {self.fetched} fetched, {self.cached} from cache, {self.failed} failed, "
            f"{self.retried} retried requests"
        )


def default_cache_dir() -> Path:
    """The blob text cache when the recipe names none: DOGE_BLOB_CACHE, else a folder under the temp dir
    (texts are keyed by blob id, a content hash, so every recipe and build can share it)."""
    return Path(os.environ.get("DOGE_BLOB_CACHE") or Path(tempfile.gettempdir()) / "doge-blobs")


def redact(message: str) -> str:
    """`message` with every URL's scheme and host (and any user:password in it) replaced by `<endpoint>`:
    botocore names the endpoint in its errors, and the endpoint belongs to the environment, not to logs."""
    return URL.sub("<endpoint>", message)


def describe(error: BaseException) -> str:
    """A short, redacted reason for a failed blob, for logs and error messages."""
    return redact(f"{type(error).__name__}: {error}")


def is_transient(error: BaseException) -> bool:
    """Whether a failed request may succeed when repeated (connection drops, timeouts, throttling, 5xx), as
    opposed to a missing blob, a denied access, missing credentials or undecodable bytes."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    permanent = (
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
        ValueError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    return not isinstance(error, permanent)


def is_access_error(error: BaseException) -> bool:
    """Whether a failure says the credentials are missing or not accepted (rather than this one blob missing)."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    return isinstance(error, (PermissionError, NoCredentialsError, PartialCredentialsError))


def anonymous_access() -> bool:
    """Unsigned requests when no AWS credentials are configured at all (no key, profile, web identity or container
    credentials in the environment, no shared credentials file); otherwise botocore's usual credential chain."""
    variables = (
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    )
    if any(os.environ.get(name) for name in variables):
        return False
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials"
    return not Path(shared).is_file()


def s3_filesystem(concurrency: int):
    """An s3fs filesystem configured from the environment only, one request per blob (no size probe first), a
    connection pool as large as the concurrency, and no retries of its own: `BlobFetcher` does the retrying, so
    `retries` in the recipe means what it says."""
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict[str, Any] = {"endpoint_url": endpoint} if endpoint else {}
    fs = s3fs.S3FileSystem(
        anon=anonymous_access(),
        client_kwargs=client_kwargs,
        config_kwargs={
            "retries": {"mode": "standard", "total_max_attempts": 1},
            "max_pool_connections": concurrency,
        },
        max_concurrency=1,  # above 1, s3fs asks each object's size before reading it: twice the requests
        skip_instance_cache=True,  # the settings above are ours; do not share an instance with other code
    )
    fs.retries = 1  # s3fs's own retry loop (class attribute, 5): one attempt, ours retry
    return fs


def _decode(data: bytes) -> str:
    """A blob's text: gunzip, then UTF-8 with undecodable bytes dropped (as the dataset card does)."""
    return gzip.decompress(data).decode("utf-8", errors="ignore")


class BlobFetcher:
    """Reads blob texts for one source: local cache first, the store for the rest, with retries and counts.

    `fill_batch` is the `datasets.IterableDataset.map(batched=True)` function: it adds `text` to a batch of rows
    and, under on_error=skip, drops the rows whose blob could not be read.
    """

    def __init__(self, settings: BlobContents, name: str = "blobs", stats: BlobFetchStats | None = None):
        self.settings = settings
        self.name = name
        self.stats = stats if stats is not None else BlobFetchStats()
        self.cache_dir = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
        self.prefix = settings.store.removeprefix("s3://").strip("/")
        self._fs = None
        self._next_log = LOG_EVERY_ROWS

    # -- the local cache -------------------------------------------------------------------------------------
    def cache_path(self, blob_id: str) -> Path:
        """Where a blob's text is cached (two-character fan-out, so no folder holds millions of files)."""
        return self.cache_dir / blob_id[:2] / f"{blob_id}.txt"

    def _read_cache(self, blob_id: str) -> str | None:
        try:
            return self.cache_path(blob_id).read_bytes().decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _write_cache(self, blob_id: str, text: str) -> None:
        """Write atomically (a temp file, then `os.replace`): a reader never sees half a text, and concurrent
        builds that fetch the same blob write identical bytes."""
        path = self.cache_path(blob_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{blob_id}.", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(text.encode("utf-8"))
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

    # -- the store -----------------------------------------------------------------------------------------------
    def _filesystem(self):
        if self._fs is None:
            self._fs = s3_filesystem(self.settings.concurrency)
        return self._fs

    def _fetch_remote(self, blob_ids: list[str]) -> dict[str, bytes | BaseException]:
        """The raw bytes of each blob (or why not), fetched concurrently; transient failures are retried up
        to `retries` times with exponential backoff, permanent ones (missing blob, denied) are not."""
        pending = {f"{self.prefix}/{blob_id}": blob_id for blob_id in blob_ids}
        results: dict[str, bytes | BaseException] = {}
        for attempt in range(self.settings.retries + 1):
            answers = self._filesystem().cat(list(pending), on_error="return", batch_size=self.settings.concurrency)
            retry = {}
            for key, blob_id in pending.items():
                answer = answers.get(key, FileNotFoundError(key))
                if isinstance(answer, BaseException) and is_transient(answer) and attempt < self.settings.retries:
                    retry[key] = blob_id
                else:
                    results[blob_id] = answer
            if not retry:
                break
            self.stats.retried += len(retry)
            delay = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)
            log.info(
                "%s: %d request(s) failed transiently, retry %d in %.1f s", self.name, len(retry), attempt + 1, delay
            )
            time.sleep(delay)
            pending = retry
        return results

    # -- texts -------------------------------------------------------------------------------------------------
    def texts(self, blob_ids: list[str]) -> list[str | None]:
        """The text of each blob id, None for one that could not be read (under on_error=skip).

        Raises BlobFetchError under on_error=fail at the first unreadable blob, under skip once more than
        `max_failures` blobs failed, and at once when the store refuses the credentials before any blob was read.
        """
        found: dict[str, str | None] = {}
        missing: list[str] = []
        failures: dict[str, BaseException] = {}
        for blob_id in dict.fromkeys(blob_ids):
            if not isinstance(blob_id, str) or not BLOB_ID.match(blob_id):
                failures[str(blob_id)] = ValueError(f"not a blob id: {blob_id!r}")
                continue
            text = self._read_cache(blob_id)
            if text is None:
                missing.append(blob_id)
            else:
                found[blob_id] = text
                self.stats.cached += 1
        if missing:
            for blob_id, answer in self._fetch_remote(missing).items():
                if isinstance(answer, BaseException):
                    failures[blob_id] = answer
                    continue
                try:
                    text = _decode(answer)
                except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
                    failures[blob_id] = ValueError(f"not gzip data ({error})")
                    continue
                self._write_cache(blob_id, text)
                found[blob_id] = text
                self.stats.fetched += 1
        if failures:
            refused = bool(missing) and all(is_access_error(failures.get(blob_id, ValueError())) for blob_id in missing)
            self._fail(failures, refused=refused and not self.stats.fetched)
        return [found.get(blob_id) if isinstance(blob_id, str) else None for blob_id in blob_ids]

    def _fail(self, failures: dict[str, BaseException], refused: bool) -> None:
        """Count the failures and raise as `on_error`/`max_failures` say; `refused`: the store denied every
        blob asked and none was ever read, i.e. the credentials, not the blobs, are the problem."""
        settings = self.settings
        if refused:
            blob_id, error = next((key, value) for key, value in failures.items() if is_access_error(value))
            raise BlobFetchError(
                f"{self.name}: the store {settings.store} refused every blob (e.g. {blob_id}: {describe(error)}); "
                + CREDENTIAL_HINT
            )
        for blob_id, error in failures.items():
            self.stats.failed += 1
            self.stats.last_failure = f"{blob_id}: {describe(error)}"
            if settings.on_error == "fail":
                raise BlobFetchError(
                    f"{self.name}: blob {blob_id} could not be read from {settings.store} ({describe(error)}); "
                    "set contents.on_error: skip to drop such rows"
                )
            if self.stats.failed <= WARN_FIRST_FAILURES:
                log.warning("%s: skipping blob %s (%s)", self.name, blob_id, describe(error))
        if self.stats.failed > settings.max_failures:
            raise BlobFetchError(
                f"{self.name}: {self.stats.failed} blobs could not be read from {settings.store}, more than "
                f"contents.max_failures ({settings.max_failures}); the last: {self.stats.last_failure}"
            )

    def fill_batch(self, batch: dict[str, list]) -> dict[str, list]:
        """A batch of rows with `text` filled from `blob_id`; rows whose blob failed are dropped (and counted)."""
        texts = self.texts(batch["blob_id"])
        keep = [index for index, text in enumerate(texts) if text is not None]
        filled = {column: [values[index] for index in keep] for column, values in batch.items() if column != "text"}
        filled["text"] = [texts[index] for index in keep]
        self.stats.rows += len(texts)
        if self.stats.rows >= self._next_log:
            log.info("%s: %s", self.name, self.stats.summary())
            self._next_log = self.stats.rows + LOG_EVERY_ROWS
        return filled
