"""Files from the Hugging Face hub through ``huggingface_hub``, when it is installed.

Then hub files live in the Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, default
``~/.cache/huggingface/hub``), shared with transformers, open_clip and every other tool: a file already there is
not fetched again, ``$HF_HUB_OFFLINE=1`` uses the cache alone, ``$HF_ENDPOINT`` names a mirror, and a revision
(branch, tag or commit) and a token (gated or private repositories; default ``$HF_TOKEN`` or a saved login) can
be given. Without ``huggingface_hub``, :mod:`clip.pretrained` downloads with its own downloader into the CLIP
cache, as before.

Failures raise :class:`~clip.download.DownloadError` with one line naming the repository, the file and why.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .download import DownloadError, sha256_of

__all__ = ["module", "hub_file", "transformers_folder", "HF_HUB_PREFIX"]

#: names ``hf-hub:ORG/REPO[@REVISION]`` are transformers CLIPModel repositories (open_clip's spelling)
HF_HUB_PREFIX = "hf-hub:"


def module():
    """``huggingface_hub``, or None when it is not installed."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def _fetch(hub, repo: str, filename: str, revision: Optional[str], token, endpoint: Optional[str]) -> Path:
    kwargs = {"revision": revision, "token": token}
    if endpoint:
        kwargs["endpoint"] = endpoint
    return Path(hub.hf_hub_download(repo, filename, **kwargs))


def _why(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def hub_file(repo: str, filename: str, revision: Optional[str] = None, token: Union[str, bool, None] = None,
             endpoint: Optional[str] = None, sha256: Optional[str] = None) -> Path:
    """``filename`` of the hub repository ``repo`` in the Hugging Face cache, fetched when missing."""
    hub = module()
    at = f"{repo}@{revision}" if revision else repo
    try:
        path = _fetch(hub, repo, filename, revision, token, endpoint)
    except Exception as err:  # huggingface_hub's errors (offline, gated, not found, HTTP) and OSError
        raise DownloadError(f"could not get {filename} of the Hugging Face hub repository {at}: {_why(err)}") \
            from None
    if sha256 is not None and sha256_of(path) != sha256:
        raise DownloadError(f"{path} (from {at}) does not have the SHA256 registered for it ({sha256}); check the "
                            "revision, or delete the file from the Hugging Face cache to fetch it again")
    return path


def transformers_folder(name: str, revision: Optional[str] = None, token: Union[str, bool, None] = None) -> Path:
    """The snapshot folder of ``hf-hub:ORG/REPO[@REVISION]`` holding ``config.json``, the first weight file the
    repository has (:data:`clip.hf_transformers.WEIGHT_FILES` order, shards included) and
    ``preprocessor_config.json`` when it has one; only these are fetched."""
    from .hf_transformers import WEIGHT_FILES

    if module() is None:
        raise DownloadError(f"{name}: names {HF_HUB_PREFIX}ORG/REPO need huggingface_hub (pip install "
                            "huggingface_hub); or give the path of a downloaded transformers CLIPModel folder")
    repo, _, pinned = name[len(HF_HUB_PREFIX):].partition("@")
    if revision and pinned and revision != pinned:
        raise DownloadError(f"{name} names revision {pinned}, but revision={revision!r} was given too")
    revision = revision or pinned or None
    folder = hub_file(repo, "config.json", revision, token).parent
    hub = module()
    for filename in WEIGHT_FILES:
        try:
            path = _fetch(hub, repo, filename, revision, token, None)
        except hub.utils.EntryNotFoundError:
            continue  # the repository (or, offline, the cache) has not this one: try the next
        except Exception as err:
            raise DownloadError(f"could not get {filename} of the Hugging Face hub repository {repo}: "
                                f"{_why(err)}") from None
        if filename.endswith(".index.json"):
            import json

            for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                hub_file(repo, shard, revision, token)
        try:
            _fetch(hub, repo, "preprocessor_config.json", revision, token, None)
        except Exception:  # optional: OpenAI's preprocessing is the default
            pass
        return folder
    raise DownloadError(f"the Hugging Face hub repository {repo} has none of {', '.join(WEIGHT_FILES)} (or, offline, "
                        "none of them is in the Hugging Face cache)")
