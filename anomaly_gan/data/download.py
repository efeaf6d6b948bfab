"""Fetch, verify and safely unpack the official archives of MVTec AD, VisA and KolektorSDD.

``data.download=true`` calls ``download_dataset`` when ``data.root`` is missing or empty:

1. download to ``<root>/.download/<file>.part`` with a progress bar; a partial file left by
   an interrupted run is resumed with an HTTP ``Range`` request (a server that ignores
   it is downloaded again from the start);
2. check the SHA-256 against ``ARCHIVES`` (or ``data.sha256``); a mismatch deletes the
   file and says what to do;
3. extract into a staging folder, refusing the whole archive if any member is absolute,
   contains ``..``, is a device, or is a link that points outside the target;
4. check the dataset layout (also accepting one wrapping top-level folder), move the
   content into ``root`` and delete the archive.

Only the standard library (urllib, hashlib, tarfile, zipfile) and tqdm are used, so no
download tool has to be installed.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from anomaly_gan.data.dataset import DatasetError

log = logging.getLogger(__name__)

DOWNLOAD_DIR = ".download"
_USER_AGENT = "anomaly_gan-dataset-downloader/1"
_SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class DatasetArchive:
    """Where a dataset's official archive lives and the SHA-256 it must have.

    ``sha256=None`` means no trustworthy value is known: downloading then requires the
    user to pass one (``data.sha256``) so nothing unverified is ever unpacked.
    """

    dataset: str
    url: str
    filename: str
    sha256: str | None
    homepage: str
    license: str


# The official archives. SHA-256 values are the ones anomalib's downloader checks on every
# download (open-edge-platform/anomalib, src/anomalib/data/datamodules/image/*.py); the
# dataset publishers do not print checksums themselves.
ARCHIVES: dict[str, DatasetArchive] = {
    "mvtec": DatasetArchive(
        dataset="MVTec AD",
        url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/"
        "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        filename="mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        license="CC BY-NC-SA 4.0",
    ),
    "visa": DatasetArchive(
        dataset="VisA",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        filename="VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        homepage="https://github.com/amazon-science/spot-diff",
        license="CC BY 4.0",
    ),
    "kolektor": DatasetArchive(
        dataset="KolektorSDD",
        url="https://go.vicos.si/kolektorsdd",
        filename="KolektorSDD.zip",
        sha256="65dc621693418585de9c4467d1340ea7958a6181816f0dc2883a1e8b61f9d4dc",
        homepage="https://www.vicos.si/resources/kolektorsdd/",
        license="CC BY-NC-SA 4.0",
    ),
}


class DownloadError(DatasetError):
    """A download, checksum or extraction failure; the message says what to do next."""


# ---------------------------------------------------------------------------- helpers
def is_empty_root(root: str | Path) -> bool:
    """True when ``root`` is missing or holds nothing but hidden entries (e.g. ``.download``).

    Downloads only ever fill an empty root, so a user's own files are never mixed with or
    overwritten by an archive.
    """
    root = Path(root).expanduser()
    if not root.exists():
        return True
    return root.is_dir() and all(entry.name.startswith(".") for entry in root.iterdir())


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(value: str, key: str = "data.sha256") -> str:
    """Validate a SHA-256 hex string (64 hex digits) and return it in lower case."""
    if not isinstance(value, str) or not _SHA256_PATTERN.match(value):
        raise ValueError(f"{key} must be 64 hexadecimal characters (a SHA-256), got {value!r}.")
    return value.lower()


# ---------------------------------------------------------------------------- download
def fetch(
    url: str,
    destination: str | Path,
    *,
    sha256: str,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``destination`` (resuming ``<destination>.part``), verify SHA-256.

    A connection that drops is retried ``retries`` times, each time resuming from the
    bytes already on disk. If it still fails, the ``.part`` file is kept so the next run
    resumes it. A checksum mismatch deletes the file (a resumed file may have mixed two
    versions of the archive) and raises ``DownloadError``.
    """
    expected = check_sha256(sha256, "sha256")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_file():
        if sha256_file(destination) == expected:
            return destination  # an earlier run finished the download
        destination.unlink()
    part = destination.with_name(destination.name + ".part")
    last_error: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(retry_wait * attempt)
        try:
            _download_once(url, part, progress=progress, timeout=timeout, chunk_size=chunk_size)
            break
        except urllib.error.HTTPError as error:
            if error.code == 416 and part.is_file() and part.stat().st_size > 0:
                break  # nothing left to fetch: the partial file is already complete
            if 500 <= error.code < 600 or error.code == 429:
                last_error = error
                continue
            raise DownloadError(
                f"Downloading {url} failed: HTTP {error.code} {error.reason}. The address may "
                "have moved: download the archive by hand from the dataset's website and "
                "extract it into data.root, or point data.download_url at a mirror."
            ) from error
        except (OSError, http.client.HTTPException, _IncompleteDownload) as error:
            last_error = error
            log.warning("Download of %s interrupted (%s); resuming.", url, error)
    else:
        size = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"Downloading {url} failed after {retries + 1} attempts ({last_error}). "
            f"{size} bytes are kept in {part}; run again with data.download=true to resume, "
            "or download the archive by hand and extract it into data.root."
        ) from last_error

    actual = sha256_file(part)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"Checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}. The "
            f"damaged file was deleted. Run again with data.download=true to download it "
            "afresh; if it keeps failing the archive has changed upstream: download it by "
            "hand from the dataset's website, check it, and pass data.sha256=<its SHA-256>."
        )
    os.replace(part, destination)
    return destination


class _IncompleteDownload(Exception):
    """The server closed the connection before sending the announced length."""


def _download_once(
    url: str, part: Path, *, progress: bool, timeout: float, chunk_size: int
) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = response.status
        if offset and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise _IncompleteDownload(f"unexpected Content-Range {content_range!r}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # no resume support: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(part, mode) as stream,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            while chunk := response.read(chunk_size):
                stream.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise _IncompleteDownload(f"connection closed after {size} of {total} bytes")


# ---------------------------------------------------------------------------- extraction
def _inside(target: Path, path: str) -> bool:
    target_text = os.path.normpath(str(target))
    normalised = os.path.normpath(path)
    return normalised == target_text or normalised.startswith(target_text + os.sep)


def _unsafe_name(name: str) -> str | None:
    """Why a member name is unsafe, or None. Checked lexically, before anything is written."""
    posix = name.replace("\\", "/")
    if not posix or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in the path"
    return None


def _check_tar_members(archive: tarfile.TarFile, target: Path) -> None:
    for member in archive.getmembers():
        reason = _unsafe_name(member.name)
        if reason is None and (member.isdev() or member.isfifo()):
            reason = "device or pipe"
        if reason is None and (member.issym() or member.islnk()):
            link = member.linkname.replace("\\", "/")
            if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
                reason = f"link to absolute path {member.linkname!r}"
            else:
                # symlinks resolve from the member's folder, hard links from the archive root
                base = target / PurePosixPath(member.name).parent if member.issym() else target
                if not _inside(target, os.path.join(base, link)):
                    reason = f"link {member.linkname!r} points outside the target"
        if reason is not None:
            raise _UnsafeMember(member.name, reason)


def _check_zip_members(archive: zipfile.ZipFile) -> None:
    # zipfile writes links as plain files holding the link text, so names are what matter.
    for info in archive.infolist():
        reason = _unsafe_name(info.filename)
        if reason is not None:
            raise _UnsafeMember(info.filename, reason)


class _UnsafeMember(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name, self.reason = name, reason


def safe_extract(archive_path: str | Path, target: str | Path) -> None:
    """Extract a .zip or .tar[.gz|.xz|.bz2] into ``target``, refusing any escaping member.

    All members are checked before anything is written, so a refused archive leaves no
    partial extraction. Tar extraction additionally uses Python's ``data`` filter.
    """
    archive_path, target = Path(archive_path), Path(target).absolute()
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as archive:
                _check_zip_members(archive)
                archive.extractall(target)
        else:
            with tarfile.open(archive_path, "r:*") as archive:
                _check_tar_members(archive, target)
                archive.extractall(target, filter="data")
    except _UnsafeMember as error:
        raise DownloadError(
            f"Refusing to extract {archive_path}: member {error.name!r} would be written "
            f"outside {target} ({error.reason}). This is not a well-formed dataset archive; "
            "nothing was extracted."
        ) from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise DownloadError(
            f"Cannot extract {archive_path}: {error}. The archive is damaged or not a "
            "zip/tar file; delete it and download again."
        ) from error


# ---------------------------------------------------------------------------- pipeline
def download_dataset(
    name: str,
    root: str | Path,
    *,
    layout_check: Callable[[Path], None],
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    retry_wait: float = 2.0,
    keep_archive: bool = False,
) -> Path:
    """Download, verify, extract and layout-check dataset ``name`` (a key of ``ARCHIVES``).

    ``url``/``sha256`` override the table (a mirror, or an archive with no known checksum).
    ``layout_check(folder)`` raises ``DatasetError`` if ``folder`` is not a valid dataset
    root. ``root`` must be missing or empty (``is_empty_root``). Returns ``root``.
    """
    if name not in ARCHIVES:
        raise ValueError(f"No download known for {name!r}; known: {', '.join(sorted(ARCHIVES))}.")
    source = ARCHIVES[name]
    root = Path(root).expanduser().absolute()
    if not is_empty_root(root):
        raise DownloadError(
            f"Not downloading {source.dataset} into {root}: the folder is not empty. Point "
            "data.root at an empty or missing folder, or remove data.download=true."
        )
    expected = sha256 if sha256 is not None else source.sha256
    if expected is None:
        raise DownloadError(
            f"No published SHA-256 is known for the {source.dataset} archive ({source.url}), "
            "so it cannot be verified. Download it by hand from "
            f"{source.homepage} and extract it into {root}, or pass "
            "data.sha256=<SHA-256 of the archive> to download and check it against that value."
        )
    expected = check_sha256(expected)
    log.info(
        "Downloading %s (licence %s, see %s) into %s",
        source.dataset,
        source.license,
        source.homepage,
        root,
    )
    work = root / DOWNLOAD_DIR
    archive = fetch(
        url or source.url,
        work / source.filename,
        sha256=expected,
        progress=progress,
        timeout=timeout,
        retries=retries,
        retry_wait=retry_wait,
    )
    staging = work / "extract"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        log.info("Extracting %s into %s", archive, root)
        safe_extract(archive, staging)
        content = _dataset_folder(staging, layout_check, source)
        for entry in sorted(content.iterdir()):
            os.replace(entry, root / entry.name)
    except DownloadError:
        archive.unlink(missing_ok=True)  # untrustworthy or useless: never reuse it
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
        if not any(work.iterdir()):
            work.rmdir()
    return root


def _dataset_folder(
    staging: Path, layout_check: Callable[[Path], None], source: DatasetArchive
) -> Path:
    """``staging`` itself, or its single top-level folder, whichever passes the layout check."""
    candidates = [staging]
    entries = [entry for entry in staging.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        candidates.append(entries[0])
    error: DatasetError | None = None
    for candidate in candidates:
        try:
            layout_check(candidate)
            return candidate
        except DatasetError as failure:
            error = failure
    raise DownloadError(
        f"The {source.dataset} archive was extracted but does not have the expected layout: "
        f"{error} The archive was deleted; download it by hand from {source.homepage} and "
        "extract it into data.root."
    )
