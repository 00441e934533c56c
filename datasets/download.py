"""Getting files onto disk: resumable HTTP downloads, Google Drive downloads, archive extraction, moving into place.

Shared by every dataset (``datasets.prepare`` calls it; it knows nothing about any dataset).

* :func:`http_download` writes ``<dst>.part``, resumes it with an HTTP ``Range`` request after an interruption
  (within a run, and on the next run), checks the size against ``Content-Length`` and renames it to ``dst`` only
  when complete. Works for ``http(s)://`` and ``file://`` URLs.
* :func:`gdrive_download` uses ``gdown`` (imported only when called).
* :func:`extract` unpacks a ``.zip`` or a tar (any compression; the type is read from the content, not the name)
  into an empty work folder, refusing members that would land outside it.
* :func:`install` moves a folder (or file) of the extracted tree to its final place, merging into an existing
  folder; within one file system every move is a rename.
"""
import http.client
import lzma
import os
import os.path as osp
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib

from .errors import UserError

__all__ = ["DownloadError", "http_download", "gdrive_download", "extract", "install", "RETRY_DELAY"]

USER_AGENT = "clip-prompt-learning-datasets/1.0 (python urllib)"
#: Seconds to wait before the first retry (doubled for each further retry, at most 30).
RETRY_DELAY = 1.0
CHUNK = 1 << 20


class DownloadError(UserError):
    """A file could not be fetched; the message names the URL and the ways around it."""


class _Incomplete(Exception):
    pass


def _content_range(value):
    """``(start, total)`` from a ``Content-Range`` header (``bytes 100-199/200`` or ``bytes */200``)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[len("bytes "):].partition("/")
    start = None if span == "*" else int(span.split("-")[0])
    return start, (int(total) if total.isdigit() else None)


class _Progress:
    def __init__(self, name, total, done, quiet):
        self.name, self.total, self.quiet = name, total, quiet
        self.last = -1
        self.update(done)

    def update(self, done):
        if self.quiet:
            return
        if self.total:
            pct = int(100 * done / self.total)
            if pct // 5 != self.last // 5 or done == self.total:
                self.last = pct
                sys.stdout.write(f"\r  {self.name}: {pct:3d}% of {self.total / 1e6:.1f} MB")
                sys.stdout.flush()
        elif done // (50 * CHUNK) != self.last:
            self.last = done // (50 * CHUNK)
            sys.stdout.write(f"\r  {self.name}: {done / 1e6:.1f} MB")
            sys.stdout.flush()

    def close(self):
        if not self.quiet:
            sys.stdout.write("\n")


def _fetch_once(url, part, timeout, quiet):
    """One request: append to (or restart) ``part``; raise :class:`_Incomplete` when the body was cut short."""
    offset = osp.getsize(part) if osp.exists(part) else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left after `offset`: the part file is complete (or wrong)
            _, total = _content_range(err.headers.get("Content-Range"))
            if total == offset:
                return
            os.remove(part)
            raise _Incomplete(f"the server's size ({total}) does not match the partial file; starting over")
        raise
    with resp:
        status = getattr(resp, "status", None) or resp.getcode() or 200
        mode = "wb"
        if offset and status == 206:
            start, _ = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                os.remove(part)
                raise _Incomplete(f"the server resumed at byte {start}, not {offset}; starting over")
            mode = "ab"
            print(f"  resuming {osp.basename(part[:-5])} at byte {offset:,}")
        elif offset:
            print(f"  the server does not resume downloads; fetching {osp.basename(part[:-5])} from the start")
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        progress = _Progress(osp.basename(part[:-5]), total, done, quiet)
        try:
            with open(part, mode) as f:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    done += len(chunk)
                    progress.update(done)
        finally:
            progress.close()
    if total is not None and done < total:
        raise _Incomplete(f"the connection closed after {done:,} of {total:,} bytes")


def http_download(url, dst, retries=4, timeout=60, quiet=False):
    """Download ``url`` to ``dst`` through ``dst + ".part"``, resuming after interruptions; returns ``dst``.

    Transient failures (connection errors, time-outs, a body cut short, HTTP 408/429/5xx) are retried
    ``retries`` times, each resuming where the last one stopped. Other HTTP errors (404, 403, ...) fail at once.
    Raises :class:`DownloadError`; the ``.part`` file is kept so that the next run resumes it.
    """
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    part = dst + ".part"
    print(f"Downloading {url}")
    last = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, quiet)
            os.replace(part, dst)
            return dst
        except urllib.error.HTTPError as err:
            if err.code not in (408, 429) and err.code < 500:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            last = f"HTTP {err.code} {err.reason}"
        except _Incomplete as err:
            last = str(err)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            last = getattr(err, "reason", None) or repr(err)
        if attempt < retries:
            have = osp.getsize(part) if osp.exists(part) else 0
            print(f"  download interrupted ({last}); retrying from byte {have:,} ({attempt + 1}/{retries})")
            time.sleep(min(RETRY_DELAY * 2**attempt, 30))
    raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last}); run again to resume")


def gdrive_download(file_id, dst, quiet=False):
    """Download the Google Drive file ``file_id`` to ``dst`` with ``gdown`` (resumable); returns ``dst``."""
    try:
        import gdown
    except ImportError as err:
        raise DownloadError("Google Drive downloads need gdown: pip install gdown") from err
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    url = f"https://drive.google.com/uc?id={file_id}"
    print(f"Downloading {url} (Google Drive)")
    try:
        out = gdown.download(id=file_id, output=dst, quiet=quiet, resume=True)
    except Exception as err:  # gdown raises its own types (FileURLRetrievalError, ...) and requests' errors
        raise DownloadError(f"{url}: {type(err).__name__}: {err}") from err
    if out is None or not osp.isfile(dst):
        raise DownloadError(f"{url}: gdown returned no file (quota exceeded, or no network?)")
    return dst


def extract(archive, workdir):
    """Unpack ``archive`` (zip or tar, any compression) into the emptied folder ``workdir``; returns ``workdir``."""
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    print(f"Extracting {osp.basename(archive)}")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    target = osp.realpath(osp.join(workdir, name))
                    if not target.startswith(osp.realpath(workdir) + os.sep) and target != osp.realpath(workdir):
                        raise UserError(f"{archive}: member {name!r} would be written outside the target folder")
                zf.extractall(workdir)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(workdir, filter="data")
                else:  # pragma: no cover - Python without PEP 706
                    tar.extractall(workdir)
        else:
            raise UserError(f"{archive} is neither a zip nor a tar archive (an HTML error page instead of the file?); "
                            "delete it and fetch it again")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        shutil.rmtree(workdir, ignore_errors=True)
        raise UserError(f"{archive} is damaged ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                        "delete it and fetch it again") from err
    return workdir


def install(src, dst):
    """Move ``src`` (file or folder) to ``dst``; a folder is merged into an existing ``dst`` folder."""
    if osp.isdir(src) and osp.isdir(dst):
        for name in os.listdir(src):
            install(osp.join(src, name), osp.join(dst, name))
        os.rmdir(src)
        return
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    if osp.isdir(dst):
        shutil.rmtree(dst)
    os.replace(src, dst)
