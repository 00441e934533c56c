"""Downloading a checkpoint into the cache: progress bar, resume, SHA256 check, atomic write.

The file is written to ``<target>.part`` and moved into place (``os.replace``) only after its checksum matched,
so a cache never holds a partial or corrupt file under the final name. A broken transfer leaves the ``.part``
file, and the next call resumes it with an HTTP ``Range`` request.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Optional

__all__ = ["download", "sha256_of", "exclusive_lock", "DownloadError"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A checkpoint could not be downloaded or verified; the message says which file to put where."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(url: str, target: Path, sha256: Optional[str]) -> str:
    check = f" (its SHA256 must be {sha256})" if sha256 else ""
    return f"download {url} and put it at {target}{check}"


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its current size). Raises on a short transfer."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the part file may already be complete
            return
        raise
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as out, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, ncols=80,
                     desc=part.name[:-len(".part")], disable=not progress) as bar:
            done = have
            while True:
                try:
                    block = response.read(_CHUNK)
                except http.client.IncompleteRead as err:
                    out.write(err.partial)
                    raise
                if not block:
                    break
                out.write(block)
                done += len(block)
                bar.update(len(block))
    if total is not None and done < total:
        raise http.client.IncompleteRead(b"", total - done)


@contextlib.contextmanager
def exclusive_lock(target: Path):
    """Hold an exclusive lock for ``target`` (POSIX ``flock``, released even if the process dies), so runs started
    together download a file once instead of writing the same ``.part`` file. A no-op where flock is missing."""
    try:
        import fcntl
        fh = open(target.with_name(f".{target.name}.lock"), "a")
    except (ImportError, OSError):  # no flock (Windows) or a folder we cannot write to: go on unlocked
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def download(url: str, target: Path, sha256: Optional[str] = None, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` unless a file with the right checksum is already there.

    Raises:
        DownloadError: offline, HTTP error, broken transfer (the partial file is kept for resuming), or a checksum
            mismatch (the bad file is deleted). The message names the URL and where to put the file by hand.
    """
    target = Path(target)
    if target.is_file() and (sha256 is None or sha256_of(target) == sha256):
        return target  # no lock needed (the cache may be read-only)
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target):
        return _download_locked(url, target, sha256, progress)


def _download_locked(url: str, target: Path, sha256: Optional[str], progress: bool) -> Path:
    if target.exists() and not target.is_file():
        raise DownloadError(f"{target} exists and is not a regular file")
    if target.is_file():
        if sha256 is None or sha256_of(target) == sha256:
            return target
        warnings.warn(f"{target} exists but its SHA256 does not match {sha256}; downloading it again")
    part = target.with_name(target.name + ".part")
    try:
        _fetch(url, part, progress)
    except (OSError, http.client.HTTPException, ValueError) as err:  # URLError and timeouts are OSErrors
        kept = f" ({part.stat().st_size} bytes kept in {part}; the next call resumes)" if part.exists() else ""
        raise DownloadError(f"could not download {url}: {err!r}{kept}. Offline? Then "
                            f"{_manual_hint(url, target, sha256)}") from err
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(f"SHA256 mismatch for {url}: expected {sha256}, got {got}; the file was deleted. "
                                f"Try again, or {_manual_hint(url, target, sha256)}")
    os.replace(part, target)
    return target
