"""The registry of pretrained checkpoints and the cache folder.

OpenAI's released models are registered with their URLs; the SHA256 of each file is the URL's second-to-last
path component. :func:`register_pretrained` adds entries: a URL (with its SHA256), or a ``builder`` callable that
produces the file in the cache (used for checkpoints the project makes itself). ``clip`` is a leaf package: it
imports nothing else of the project; the project's own models (``tiny-digits``) are registered by ``pretrain``
when it is imported (``trainers`` imports it).

Cache folder: the ``download_root`` argument, else ``$CLIP_CACHE_DIR``, else ``~/.cache/clip``. Entries that live
in a Hugging Face hub repository (open_clip's, :mod:`clip.openclip`) are fetched through ``huggingface_hub`` into
the Hugging Face cache when it is installed (:mod:`clip.hf_hub`), with a revision and a token; without it, by the
downloader into the CLIP cache. A file the downloader already put in the CLIP cache is used either way.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import hf_hub
from .download import DownloadError, download, sha256_of

__all__ = ["available_models", "register_pretrained", "pretrained_path", "pretrained_options", "cache_dir",
           "PretrainedSpec"]

_OPENAI_BASE = "https://openaipublic.azureedge.net/clip/models"

#: released name -> (sha256, file name); the URL is <base>/<sha256>/<file name>
_OPENAI_RELEASES = {
    "RN50": ("afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt"),
    "RN101": ("8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt"),
    "RN50x4": ("7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt"),
    "RN50x16": ("52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt"),
    "RN50x64": ("be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt"),
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02", "ViT-L-14-336px.pt"),
}


@dataclass(frozen=True)
class PretrainedSpec:
    name: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    builder: Optional[Callable[[Path], Union[str, Path]]] = None
    #: how :func:`clip.load` builds and preprocesses it: ``activation``, ``mean``, ``std``, ``interpolation``,
    #: ``resize_mode`` (see :mod:`clip.openclip`); empty for OpenAI's models
    options: Mapping[str, Any] = ()
    filename_override: Optional[str] = None
    #: ``(repository, file, revision or None, endpoint or None)`` of a file on the Hugging Face hub
    hub: Optional[Tuple[str, str, Optional[str], Optional[str]]] = None

    @property
    def filename(self) -> str:
        if self.filename_override:
            return self.filename_override
        return os.path.basename(self.url) if self.url else re.sub(r"[^A-Za-z0-9_.-]", "-", self.name) + ".pt"


_REGISTRY: Dict[str, PretrainedSpec] = {}


def register_pretrained(name: str, *, url: Optional[str] = None, sha256: Optional[str] = None,
                        builder: Optional[Callable[[Path], Union[str, Path]]] = None,
                        options: Optional[Mapping[str, Any]] = None, filename: Optional[str] = None,
                        hub: Optional[Tuple[str, str, Optional[str], Optional[str]]] = None) -> None:
    """Register a checkpoint under ``name`` for :func:`clip.load`.

    Give either ``url`` (downloaded into the cache, checked against ``sha256`` if given, or against a 64-hex-digit
    path component of the URL as in OpenAI's URLs) or ``builder``, a callable ``builder(cache_dir) -> path`` that
    returns the path of a checkpoint file (creating it if needed). ``options`` tell :func:`clip.load` how to build
    and preprocess the model (``activation``, ``mean``, ``std``, ``interpolation``, ``resize_mode``); ``filename``
    is the name in the cache (default: the URL's last component). ``hub``: ``(repository, file, revision,
    endpoint)`` when the URL is a Hugging Face hub file, fetched through ``huggingface_hub`` when it is installed.
    Registering an existing name replaces it with a warning.
    """
    if (url is None) == (builder is None):
        raise ValueError(f"register_pretrained({name!r}): give exactly one of url= or builder=")
    if url is not None and sha256 is None:
        match = re.search(r"/([0-9a-f]{64})/[^/]+$", url)
        sha256 = match.group(1) if match else None
    spec = PretrainedSpec(name=name, url=url, sha256=sha256, builder=builder,
                          options=tuple(sorted((options or {}).items())), filename_override=filename, hub=hub)
    if name in _REGISTRY and _REGISTRY[name] != spec:
        warnings.warn(f"pretrained checkpoint {name!r} is registered again; the new entry replaces the old one")
    _REGISTRY[name] = spec


for _name, (_sha, _file) in _OPENAI_RELEASES.items():
    register_pretrained(_name, url=f"{_OPENAI_BASE}/{_sha}/{_file}", sha256=_sha)




def available_models() -> List[str]:
    """Names :func:`clip.load` accepts (OpenAI's released models first, then registered ones)."""
    return list(_REGISTRY)


def pretrained_options(name: str) -> Dict[str, Any]:
    """The build/preprocessing options registered with ``name`` (empty for unregistered names and OpenAI's)."""
    spec = _REGISTRY.get(name)
    return dict(spec.options) if spec is not None else {}


def cache_dir(download_root: Union[str, Path, None] = None) -> Path:
    """``download_root``, else ``$CLIP_CACHE_DIR``, else ``~/.cache/clip`` (user-expanded)."""
    root = download_root or os.environ.get("CLIP_CACHE_DIR") or "~/.cache/clip"
    return Path(os.path.expanduser(str(root)))


def pretrained_path(name: str, download_root: Union[str, Path, None] = None, progress: bool = True,
                    revision: Optional[str] = None, token: Union[str, bool, None] = None) -> Path:
    """Path of the checkpoint registered as ``name``, downloading or building it into the cache if needed
    (``hf-hub:ORG/REPO``: the folder of a transformers CLIPModel in the Hugging Face cache).

    ``revision`` and ``token`` apply to files on the Hugging Face hub and need ``huggingface_hub``.
    """
    if name.startswith(hf_hub.HF_HUB_PREFIX):
        return hf_hub.transformers_folder(name, revision, token)
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}: not a file, and not one of {available_models()}")
    spec = _REGISTRY[name]
    root = cache_dir(download_root)
    if spec.hub is not None and hf_hub.module() is not None:
        repo, filename, pinned, endpoint = spec.hub
        fetched = root / spec.filename  # what the downloader fetched before huggingface_hub was installed
        if revision is None and pinned is None and fetched.is_file() and \
                (spec.sha256 is None or sha256_of(fetched) == spec.sha256):
            return fetched
        return hf_hub.hub_file(repo, filename, revision or pinned, token, endpoint, spec.sha256)
    if revision is not None or token is not None:
        need = "huggingface_hub (pip install huggingface_hub)" if spec.hub else "a file on the Hugging Face hub"
        raise DownloadError(f"{name}: revision= and token= need {need}")
    if spec.builder is not None:
        root.mkdir(parents=True, exist_ok=True)
        path = Path(spec.builder(root))
        if not path.is_file():
            raise FileNotFoundError(f"the builder of {name!r} returned {path}, which is not a file")
        return path
    return download(spec.url, root / spec.filename, sha256=spec.sha256, progress=progress)
