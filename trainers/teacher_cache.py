"""A frozen teacher's image features over a run's training images, computed once and kept on disk.

CasPL's phase 1 (``KD.TEACHER_MODE cached``) uses it: instead of running the teacher's image encoder on every
augmented batch of every epoch, the teacher sees each training image once, in a fixed deterministic view (the test
pipeline -- resize the shorter edge, center crop, to tensor, normalise -- at the teacher's input resolution), and
its L2-normalised image features are stored. Logits are formed at use time from these features, the teacher's
text features and the student's logit scale, exactly as in the online path.

The file is named by a SHA256 key over everything the features depend on (:func:`cache_key`): the ordered list of
training image paths, the teacher's identity (released name + published SHA256, or the checkpoint file's SHA256),
the view (resolution, interpolation, mean/std, normalisation steps) and the numerics (effective precision, weight
and autocast dtypes). A file is written to a temporary name in the same folder and moved into place
(``os.replace``), so readers never see a partial file; on load the key, the image list, the shape, the dtype and a
SHA256 of the feature bytes are checked (:func:`load_features`), and anything that does not match is reported and
recomputed, never used.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from dassl.utils import load_checkpoint

from .compat import atomic_write

#: ``KD.TEACHER_MODE`` values: ``online`` runs the teacher on every augmented batch (the fork's behaviour),
#: ``cached`` once per training image on a fixed view
TEACHER_MODES = ("online", "cached")
#: version of the file layout; part of the key
FORMAT = 1
#: folder name under ``DATASET.ROOT`` when ``KD.TEACHER_CACHE_DIR`` is empty
DEFAULT_DIRNAME = ".caspl_teacher_cache"


def default_cache_dir(cfg) -> str:
    """``KD.TEACHER_CACHE_DIR``, else ``<DATASET.ROOT>/.caspl_teacher_cache`` (beside the data it describes, so
    reruns, other seeds and other output folders share it)."""
    folder = str(cfg.KD.get("TEACHER_CACHE_DIR", "") or "")
    if not folder:
        folder = osp.join(str(cfg.DATASET.ROOT), DEFAULT_DIRNAME)
    return osp.abspath(osp.expanduser(folder))


def teacher_identity(name: str) -> Dict[str, str]:
    """What names the teacher's weights: a released/registered name with its published SHA256, or a file path
    with the SHA256 of the file's bytes (a copy elsewhere has the same identity; an edited file does not)."""
    import clip
    from clip.download import sha256_of
    from clip.pretrained import _REGISTRY, pretrained_path

    path = osp.expanduser(name)
    if name not in clip.available_models() and osp.isfile(path):
        return {"file_sha256": sha256_of(path)}
    spec = _REGISTRY.get(name)
    if spec is not None and spec.sha256:
        return {"name": name, "sha256": spec.sha256}
    # a registered name built locally (no published checksum): hash the file it resolves to
    return {"name": name, "file_sha256": sha256_of(pretrained_path(name, progress=False))}


def view_cfg(cfg, size: int):
    """A copy of ``cfg`` whose ``INPUT.SIZE`` is the teacher's (square) resolution: its test transform is the view."""
    view = copy.deepcopy(cfg)
    if view.is_frozen():
        view.defrost()
    view.INPUT.SIZE = (int(size), int(size))
    view.freeze()
    return view


def view_settings(cfg, size: int) -> Dict[str, object]:
    """Everything that defines the fixed view (the test pipeline at ``size``), for the key and ``result.json``."""
    steps = [s for s in cfg.INPUT.TRANSFORMS if s in ("normalize", "instance_norm")]
    return {"pipeline": "resize shorter edge + center crop", "size": int(size),
            "interpolation": str(cfg.INPUT.INTERPOLATION), "steps": steps,
            "mean": [float(v) for v in cfg.INPUT.PIXEL_MEAN], "std": [float(v) for v in cfg.INPUT.PIXEL_STD]}


def numerics(precision, teacher) -> Dict[str, str]:
    """The effective precision and dtypes the teacher runs in."""
    dtype = next(teacher.parameters()).dtype
    return {"precision": str(precision.effective), "param_dtype": str(dtype),
            "autocast_dtype": str(precision.autocast_dtype)}


def cache_key(impaths: Sequence[str], teacher: Dict[str, str], view: Dict[str, object],
              numerics_: Dict[str, str]) -> str:
    """SHA256 (hex) over the ordered image paths, the teacher identity, the view and the numerics."""
    digest = hashlib.sha256()
    head = {"format": FORMAT, "what": "normalised teacher image features", "teacher": teacher, "view": view,
            "numerics": numerics_, "images": len(impaths)}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for path in impaths:
        digest.update(b"\0")
        digest.update(str(path).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cache_filename(dataset: str, teacher_name: str, key: str) -> str:
    """``<dataset>_<teacher>_<key>.pt``: the model name (``ViT-L-14``) or the checkpoint file's stem."""
    import clip

    tag = teacher_name
    if teacher_name not in clip.available_models():
        tag = osp.splitext(osp.basename(teacher_name.rstrip("/\\")))[0] or "teacher"
    tag = "".join(c if c.isalnum() or c in "-_." else "-" for c in tag)
    return f"{dataset.lower() or 'data'}_{tag}_{key}.pt"


def features_sha256(features: torch.Tensor) -> str:
    flat = features.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def load_features(path: str, key: str, impaths: Sequence[str]) -> Tuple[Optional[torch.Tensor], str]:
    """(features, "") when ``path`` holds a complete cache for ``key`` and ``impaths``; else (None, why not)."""
    if not osp.isfile(path):
        return None, "missing"
    try:  # the project's one checkpoint reader: tensors and plain values only, no code from the file runs
        payload = load_checkpoint(path)
    except Exception as err:  # truncated, not a torch file, a foreign pickle: all unusable
        return None, f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None, "not a teacher cache of this format"
    if payload.get("key") != key:
        return None, "made for other inputs (its key differs)"
    feats = payload.get("features")
    if not torch.is_tensor(feats) or feats.dim() != 2 or feats.shape[0] != len(impaths):
        shape = tuple(feats.shape) if torch.is_tensor(feats) else None
        return None, f"features of shape {shape}, expected ({len(impaths)}, D)"
    if not feats.is_floating_point() or str(feats.dtype) != payload.get("dtype"):
        return None, f"features of dtype {feats.dtype}, recorded {payload.get('dtype')}"
    if list(payload.get("impaths") or ()) != list(impaths):
        return None, "its image list differs"
    if features_sha256(feats) != payload.get("features_sha256"):
        return None, "its features do not match their recorded SHA256 (corrupt)"
    if not bool(torch.isfinite(feats).all()):
        return None, "non-finite features"
    return feats, ""


def save_features(path: str, key: str, impaths: Sequence[str], features: torch.Tensor,
                  info: Optional[dict] = None) -> None:
    """Write the cache atomically (the project's one ``atomic_write``: a synced temporary file, then renamed)."""
    features = features.detach().cpu().contiguous()
    payload = {"format": FORMAT, "key": key, "impaths": list(impaths), "features": features,
               "dtype": str(features.dtype), "features_sha256": features_sha256(features),
               "info": json.dumps(info or {}, sort_keys=True)}
    atomic_write(path, lambda fh: torch.save(payload, fh), binary=True)


class BatchRows:
    """Maps a training batch to its rows in the cache: by the loader's ``index`` (checked against ``impath``), or
    by ``impath`` alone for a Dassl whose batches carry no index."""

    def __init__(self, impaths: Sequence[str]):
        self.impaths: List[str] = list(impaths)
        self._by_path: Optional[Dict[str, int]] = None

    def __call__(self, batch) -> torch.Tensor:
        paths = list(batch["impath"])
        index = batch.get("index") if isinstance(batch, dict) else None
        if index is not None:
            rows = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
            n = len(self.impaths)
            if len(rows) == len(paths) and all(0 <= int(r) < n and self.impaths[int(r)] == p
                                               for r, p in zip(rows.tolist(), paths)):
                return rows
        if self._by_path is None:
            self._by_path = {p: i for i, p in enumerate(self.impaths)}
        try:
            return torch.tensor([self._by_path[p] for p in paths], dtype=torch.long)
        except KeyError as err:
            raise RuntimeError(f"training image {err.args[0]!r} is not in the teacher cache's image list (the "
                               "training loader reads other data than DATASET's training split)") from None
