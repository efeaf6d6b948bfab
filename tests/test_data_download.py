"""Downloads against a local HTTP server on 127.0.0.1 serving generated archives.

Covers: a good archive end to end through ``data.download=true``, a wrong checksum, members
escaping the target (``../escape``, absolute, symlink), a connection cut mid-way and its
resume, a server without Range support, HTTP errors, and an unknown checksum. Nothing is
fetched from the internet; every request has a short timeout.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from anomaly_gan.data import (
    ARCHIVES,
    DatasetArchive,
    DownloadError,
    KolektorDataModule,
    MVTecDataModule,
    download_dataset,
)
from anomaly_gan.data.download import fetch, safe_extract
from tests.test_data import make_tiny_mvtec
from tests.test_data_fixtures import make_kolektor

TIMEOUT = 5.0


# ---------------------------------------------------------------------------- server
@dataclass
class Served:
    """What the server offers and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_once: set[str] = field(default_factory=set)  # send half the body, then hang up
    no_range: set[str] = field(default_factory=set)  # ignore Range headers
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    base_url: str = ""

    def add(self, name: str, data: bytes) -> str:
        self.files[f"/{name}"] = data
        return f"{self.base_url}/{name}"


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            served.requests.append((self.path, range_header))
            data = served.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if range_header and self.path not in served.no_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in served.cut_once:
                served.cut_once.discard(self.path)
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[Served]:
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    served.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


# ---------------------------------------------------------------------------- archives
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(folder: Path | None = None, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        if folder is not None:
            for path in sorted(folder.rglob("*")):
                archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
        for info in extra or []:
            payload = b"escaped!" if info.isfile() else b""
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _zip(folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + str(path.relative_to(folder)))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mvtec_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    source = tmp_path_factory.mktemp("mvtec_src")
    make_tiny_mvtec(source, "bottle", n_train=4)
    return _tar(source)


def _mvtec_check(root: Path) -> None:
    MVTecDataModule(root=str(root), category="bottle").check_layout(root)


# ---------------------------------------------------------------------------- tests
def test_good_archive_through_datamodule_download(
    tmp_path: Path, server: Served, mvtec_tar: bytes
) -> None:
    url = server.add("mvtec.tar.gz", mvtec_tar)
    root = tmp_path / "mvtec"
    dm = MVTecDataModule(
        root=str(root),
        category="bottle",
        image_size=8,
        batch_size=2,
        download=True,
        download_url=url,
        sha256=_sha(mvtec_tar).upper(),  # case does not matter
        cache=False,
    )
    dm.setup()
    assert len(dm.train_samples) + len(dm.val_samples) == 4
    assert sorted(p.name for p in root.iterdir()) == ["bottle"]  # archive and staging gone
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape[1:] == (3, 8, 8)
    # a second setup on the filled root does not download again
    MVTecDataModule(root=str(root), category="bottle", download=True, download_url=url).setup()
    assert len(server.requests) == 1


def test_wrong_checksum_deletes_the_file_and_says_what_to_do(
    tmp_path: Path, server: Served, mvtec_tar: bytes
) -> None:
    url = server.add("mvtec.tar.gz", mvtec_tar)
    root = tmp_path / "mvtec"
    with pytest.raises(DownloadError, match="Checksum mismatch") as error:
        download_dataset(
            "mvtec", root, layout_check=_mvtec_check, url=url, sha256="0" * 64, progress=False
        )
    message = str(error.value)
    assert "0" * 64 in message and _sha(mvtec_tar) in message
    assert "deleted" in message and "data.download=true" in message
    assert not [p for p in root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("kind", "member"),
    [
        ("tar", tarfile.TarInfo("../escape")),
        ("tar", tarfile.TarInfo("/tmp/anomaly_gan_absolute_escape")),
        ("tar-symlink", tarfile.TarInfo("bottle/link")),
        ("zip", "../escape"),
    ],
)
def test_member_leaving_the_target_is_refused(
    tmp_path: Path, server: Served, kind: str, member: tarfile.TarInfo | str
) -> None:
    source = tmp_path / "source"
    make_tiny_mvtec(source, "bottle", n_train=2)
    if kind == "zip":
        assert isinstance(member, str)
        data = _zip(source, extra={member: b"escaped!"})
    else:
        assert isinstance(member, tarfile.TarInfo)
        if kind == "tar-symlink":
            member.type, member.linkname = tarfile.SYMTYPE, "../../../outside"
        data = _tar(source, extra=[member])
    url = server.add("evil", data)
    root = tmp_path / "deep" / "root"
    with pytest.raises(DownloadError, match="Refusing to extract") as error:
        download_dataset(
            "mvtec", root, layout_check=_mvtec_check, url=url, sha256=_sha(data), progress=False
        )
    name = member if isinstance(member, str) else member.name
    assert repr(name) in str(error.value)
    assert not (tmp_path / "deep" / "escape").exists() and not (tmp_path / "escape").exists()
    assert not Path("/tmp/anomaly_gan_absolute_escape").exists()
    assert not [p for p in root.rglob("*") if p.is_file()]  # nothing extracted, archive deleted


def test_connection_cut_midway_keeps_the_part_and_resumes(
    tmp_path: Path, server: Served, mvtec_tar: bytes
) -> None:
    url = server.add("mvtec.tar.gz", mvtec_tar)
    server.cut_once.add("/mvtec.tar.gz")
    target = tmp_path / "dl" / "mvtec.tar.gz"
    part = target.with_name("mvtec.tar.gz.part")
    options = {"sha256": _sha(mvtec_tar), "progress": False, "timeout": TIMEOUT}
    with pytest.raises(DownloadError, match="resume") as error:
        fetch(url, target, retries=0, **options)
    assert str(part) in str(error.value)
    half = len(mvtec_tar) // 2
    assert part.stat().st_size == half and not target.exists()

    assert fetch(url, target, retries=0, **options) == target
    assert target.read_bytes() == mvtec_tar and not part.exists()
    assert server.requests[-1] == ("/mvtec.tar.gz", f"bytes={half}-")


def test_cut_connection_is_retried_within_one_call(
    tmp_path: Path, server: Served, mvtec_tar: bytes
) -> None:
    url = server.add("mvtec.tar.gz", mvtec_tar)
    server.cut_once.add("/mvtec.tar.gz")
    root = tmp_path / "mvtec"
    download_dataset(
        "mvtec",
        root,
        layout_check=_mvtec_check,
        url=url,
        sha256=_sha(mvtec_tar),
        progress=False,
        timeout=TIMEOUT,
        retry_wait=0.0,
    )
    assert (root / "bottle" / "train" / "good").is_dir()
    assert [r for _, r in server.requests] == [None, f"bytes={len(mvtec_tar) // 2}-"]


def test_server_without_range_support_restarts_cleanly(
    tmp_path: Path, server: Served, mvtec_tar: bytes
) -> None:
    url = server.add("a.tar.gz", mvtec_tar)
    server.no_range.add("/a.tar.gz")
    target = tmp_path / "a.tar.gz"
    target.with_name("a.tar.gz.part").write_bytes(b"stale bytes from another file")
    fetch(url, target, sha256=_sha(mvtec_tar), progress=False, timeout=TIMEOUT, retries=0)
    assert target.read_bytes() == mvtec_tar


def test_zip_with_a_wrapping_folder_is_hoisted_and_layout_checked(
    tmp_path: Path, server: Served
) -> None:
    source = make_kolektor(tmp_path / "src", n_parts=3, views=2, defective=[(1, 1)])
    data = _zip(source, prefix="KolektorSDD/")
    url = server.add("KolektorSDD.zip", data)
    root = tmp_path / "kolektor"
    dm = KolektorDataModule(
        root=str(root), download=True, download_url=url, sha256=_sha(data), image_size=8
    )
    dm.setup()
    assert sorted(p.name for p in root.iterdir()) == ["kos01", "kos02", "kos03"]
    assert sum(s.label for s in dm.test_samples["kolektor"]) == 1

    wrong = _zip(tmp_path / "src" / "kos01", prefix="x/")  # no kosNN folders inside
    url = server.add("wrong.zip", wrong)
    with pytest.raises(DownloadError, match="expected layout"):
        download_dataset(
            "kolektor",
            tmp_path / "k2",
            layout_check=dm.check_layout,
            url=url,
            sha256=_sha(wrong),
            progress=False,
        )
    assert not (tmp_path / "k2" / ".download" / "KolektorSDD.zip").exists()


def test_http_error_and_refusals(tmp_path: Path, server: Served, monkeypatch) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server.base_url}/missing", tmp_path / "x", sha256="a" * 64, progress=False)

    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("user data")
    with pytest.raises(DownloadError, match="not empty"):
        download_dataset("mvtec", full, layout_check=_mvtec_check, progress=False)

    unknown = DatasetArchive("Mystery", f"{server.base_url}/m.tar", "m.tar", None, "h", "l")
    monkeypatch.setitem(ARCHIVES, "mystery", unknown)
    with pytest.raises(DownloadError, match=r"data\.sha256=") as error:
        download_dataset("mystery", tmp_path / "m", layout_check=_mvtec_check, progress=False)
    assert "No published SHA-256" in str(error.value)
    assert server.requests == [("/missing", None)]  # the refusals fetched nothing


def test_safe_extract_keeps_links_inside_the_target(tmp_path: Path) -> None:
    inside = tarfile.TarInfo("a/link")
    inside.type, inside.linkname = tarfile.SYMTYPE, "../b.txt"
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_tar(extra=[tarfile.TarInfo("b.txt"), inside]))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a" / "link").read_bytes() == b"escaped!"


def test_official_table_has_urls_and_sha256_for_each_dataset() -> None:
    assert set(ARCHIVES) == {"mvtec", "visa", "kolektor"}
    for archive in ARCHIVES.values():
        assert archive.url.startswith("https://")
        assert archive.sha256 is not None and len(archive.sha256) == 64


def test_download_without_archive_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.download must be true or false"):
        KolektorDataModule(root=str(tmp_path), download="yes")  # type: ignore[arg-type]
