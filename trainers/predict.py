"""Use what a run learned: classify new images and export its classifier (:func:`load_run`, :class:`Classifier`).

    >>> from trainers.api import load_run
    >>> clf = load_run("output/demo/base2new/train_base/digits/shots_16/CoOp/tiny_digits/seed1")
    >>> clf.classify(["photos/"], top_k=3)                  # files or folders (searched recursively)
    >>> clf.classify(["img.png"], classnames=["cat", "dog"])  # other classes, where the method allows it
    >>> clf.export_head("coop_head.safetensors")            # class names + text features + logit scale

The run is rebuilt from the ``config.yaml`` it wrote (:func:`trainers.api.run_cfg`) for class names, without its
dataset (``Method(cfg, classnames=...)``), and its learner is loaded by the one checkpoint rule
(:func:`trainers.checkpoints.resolve_checkpoint`; an evaluation-only run: the ``model_dir`` and epoch its
``result.json`` records). Images go through the run's test transform and the method's evaluation path
(``PromptTrainer.evaluating`` + ``model_inference``, what ``test()`` runs), so the top-1 class of an image is the one
the evaluation-only run counted. The run's own classes are its ``result.json``'s ``classnames`` (else the classes
its checkpoint records). New class names work for every method whose learned tensors do not have one row per
class; class-specific ones (CoOp with ``CSC True``) are refused in one line (:func:`~trainers.checkpoints.check_classes`).

**The exported head** is what plain CLIP needs to classify like the run, when the run's evaluation logits are
``logit_scale * normalise(plain CLIP image features) @ text_features.T``:

- ``.pt`` (``torch.load(path, weights_only=True)``): ``{"format": "clip-head/1", "classnames": [str, ...],
  "text_features": float32 (C, E), L2-normalised rows, "logit_scale": float, the multiplier itself (already
  exponentiated: 100.0 for OpenAI's CLIP), "backbone": the run's MODEL.BACKBONE.NAME}``;
- ``.safetensors``: tensors ``text_features`` (C, E) and ``logit_scale`` (a 1-element float32 tensor), metadata
  ``format``, ``classnames`` (a JSON list) and ``backbone``.

Before writing, the head is checked on probe images: plain CLIP's image features times the head must give the
run's evaluation logits. Methods whose prompts change the image encoder, whose class features depend on each
image, whose image features are projected, or whose extension mixes in another head fail that check and are
refused in one line saying which.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from clip import MASTER_DTYPE

from .compat import UserError

__all__ = ["load_run", "Classifier", "Prediction", "find_images", "read_classnames", "read_head", "HEAD_FORMAT",
           "IMAGE_EXTENSIONS"]

HEAD_FORMAT = "clip-head/1"
#: file name endings searched for in folders (a file named on the command line is read whatever its ending)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEVICES = ("auto", "cpu", "cuda")
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@dataclass
class Prediction:
    """One image's ``top_k`` classes, most probable first, with their softmax probabilities."""

    path: str
    classes: List[str]
    scores: List[float]

    @property
    def label(self) -> str:
        return self.classes[0]


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------
def find_images(inputs: Iterable[Union[str, os.PathLike]]) -> List[str]:
    """Image files from files and folders (folders searched recursively for :data:`IMAGE_EXTENSIONS`, sorted);
    a path that does not exist, or no image at all, is one :class:`UserError`."""
    found = []
    for item in inputs:
        path = os.fspath(item)
        if osp.isfile(path):
            found.append(path)
        elif osp.isdir(path):
            inside = []
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                inside += [osp.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not inside:
                raise UserError(f'no image files in the folder "{path}" (searched recursively for '
                                f"{', '.join(IMAGE_EXTENSIONS)})")
            found += inside
        else:
            raise UserError(f'no file or folder at "{path}"; give image files or folders of images')
    if not found:
        raise UserError("no images given; give image files or folders of images")
    return found


def read_classnames(path: str) -> List[str]:
    """Class names from a text file, one a line (blank lines skipped)."""
    if not osp.isfile(path):
        raise UserError(f'class-name file not found: "{path}"; give a text file with one class name a line')
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    return check_classnames(names, f'the class-name file "{path}"')


def check_classnames(names: Sequence[str], what: str = "the class names") -> List[str]:
    names = [str(n).strip() for n in names]
    if len(names) < 2 or any(not n for n in names):
        raise UserError(f"{what}: give at least two non-empty class names")
    seen = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})
    if dupes:
        raise UserError(f"{what}: each class name once; repeated: {', '.join(dupes)}")
    return names


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------
def _existing(path: str, run_dir: str) -> str:
    """A path recorded by a run: as it is, else relative to the repository root (where the scripts run)."""
    if not path or osp.isabs(path) or osp.exists(path):
        return path
    candidate = osp.join(REPO, path)
    return candidate if osp.exists(candidate) else path


def load_run(run_dir: str, device: Optional[str] = None, precision: Optional[str] = None,
             batch_size: Optional[int] = None, progress: bool = False, verbose: bool = False) -> "Classifier":
    """The classifier of a finished run folder (training or evaluation-only).

    device: ``cpu``, ``cuda`` or None/``auto`` (CUDA when available and the run used it). precision: ``fp32``,
    ``fp16``, ``bf16`` or ``amp`` (default: the run's). batch_size: images per forward pass (default the run's
    ``DATALOADER.TEST.BATCH_SIZE``). progress: a progress bar on stderr while classifying. verbose: the trainer's
    build messages (loading CLIP, the prompts, the checkpoint) on stderr; default: not shown.
    """
    from .api import method_precision, run_cfg

    run_dir = os.fspath(run_dir)
    if not osp.isdir(run_dir):
        raise UserError(f'no run folder at "{run_dir}"; give the --output-dir of a finished run')
    result_path = osp.join(run_dir, "result.json")
    if not osp.isfile(result_path):
        raise UserError(f'"{run_dir}" has no result.json: the run did not finish (or this is not a run folder); '
                        "finish it first (the same command resumes it)")
    with open(result_path) as f:
        result = json.load(f)
    if device not in (None, *DEVICES):
        raise UserError(f"device {device!r}: choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA device is available here; use --device cpu")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise UserError(f"batch size {batch_size!r}: give a whole number of at least 1")
    opts = []
    if device == "cpu":
        opts += ["USE_CUDA", "False"]
    elif device == "cuda":
        opts += ["USE_CUDA", "True"]
    cfg = run_cfg(run_dir)
    if precision is not None:
        if method_precision(cfg) is None:
            raise UserError(f"trainer {cfg.TRAINER.NAME} has no precision setting")
        from .registry import METHODS

        opts += [f"TRAINER.{METHODS[cfg.TRAINER.NAME].block}.PREC", str(precision)]
    if opts:
        cfg = run_cfg(run_dir, opts)
    classnames = result.get("classnames")
    if result.get("eval_only"):
        checkpoint_dir = _existing(result.get("model_dir") or "", run_dir)
        epoch = result.get("epochs")
    else:
        checkpoint_dir, epoch = run_dir, None
    return Classifier(cfg, checkpoint_dir or None, epoch, classnames, batch_size=batch_size, progress=progress,
                      run_dir=run_dir, verbose=verbose, eval_only=bool(result.get("eval_only")))


def _quiet(verbose: bool):
    """Where the trainer's build messages go: stderr when ``verbose`` (so a CSV on stdout stays clean), else
    nowhere."""
    return contextlib.redirect_stdout(sys.stderr if verbose else io.StringIO())


class Classifier:
    """A trained run as a classifier of images (see the module docstring). Built by :func:`load_run`.

    Trainers are built per list of class names (prompts depend on them) and kept.
    """

    def __init__(self, cfg, checkpoint_dir: Optional[str], epoch: Optional[int],
                 classnames: Optional[Sequence[str]] = None, batch_size: Optional[int] = None,
                 progress: bool = False, run_dir: Optional[str] = None, verbose: bool = False,
                 eval_only: bool = False):
        from dassl.data.transforms import build_transform

        self.cfg = cfg
        self.verbose = verbose
        self.run_dir = run_dir
        self.checkpoint_dir = checkpoint_dir
        self.epoch = epoch
        self.batch_size = int(batch_size or cfg.DATALOADER.TEST.BATCH_SIZE)
        self.progress = progress
        with _quiet(self.verbose):
            self.transform = build_transform(cfg, is_train=False)
        self._trainers: Dict[Tuple[str, ...], object] = {}
        self._heads: Dict[Tuple[str, ...], dict] = {}
        self._own = list(classnames) if classnames else None
        if self._own is None and not eval_only:  # an evaluation-only run's classes need not be the trained ones
            self._own = self._recorded_classes()

    # -- classes and trainers ------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.cfg.TRAINER.NAME

    @property
    def classnames(self) -> List[str]:
        """The run's own classes."""
        if self._own is None:
            raise UserError(f'the run "{self.run_dir}" records no class names (a run from before result.json listed '
                            "them); give the class names (--classes or --classnames FILE)")
        return list(self._own)

    def _recorded_classes(self) -> Optional[List[str]]:
        from dassl.utils import load_checkpoint

        from .checkpoints import recorded_classes, resolve_checkpoint
        from .registry import METHODS

        method = METHODS.get(self.method)
        if method is not None and self.checkpoint_dir and method.trains:
            path, _ = resolve_checkpoint(self.checkpoint_dir, method.learner_name, self._numbered_epoch(method),
                                         what="the run's checkpoint")
            return recorded_classes(load_checkpoint(path).get("state_dict") or {})
        return None

    def _numbered_epoch(self, method) -> Optional[int]:
        """The epoch to load: the recorded one when its numbered checkpoint exists, else None (the checkpoint rule
        picks the deployed file: the best one, or the run's last)."""
        from .checkpoints import NUMBERED

        if self.epoch is None or not self.checkpoint_dir:
            return None
        numbered = osp.join(self.checkpoint_dir, method.learner_name, f"{NUMBERED}{self.epoch}")
        return self.epoch if osp.isfile(numbered) else None

    def trainer(self, classnames: Optional[Sequence[str]] = None):
        """The run's trainer built for ``classnames`` (default the run's own) with the learned weights loaded."""
        from .registry import METHODS

        names = tuple(check_classnames(classnames) if classnames is not None else self.classnames)
        if names not in self._trainers:
            method = METHODS[self.method]
            with _quiet(self.verbose):
                trainer = method.cls(self.cfg, classnames=list(names))
                if trainer.get_model_names():
                    if not self.checkpoint_dir:
                        raise UserError(f'the run "{self.run_dir}" names no checkpoint folder to load')
                    trainer.load_model(self.checkpoint_dir, epoch=self._numbered_epoch(method))
            trainer.set_model_mode("eval")
            self._trainers[names] = trainer
        return self._trainers[names]

    @staticmethod
    def _evaluating(trainer):
        evaluating = getattr(trainer, "evaluating", None)
        return evaluating() if evaluating is not None else torch.no_grad()

    # -- images ----------------------------------------------------------------------------------------------
    def _load(self, image) -> torch.Tensor:
        from PIL import Image

        from dassl.utils import read_image

        if isinstance(image, Image.Image):
            return self.transform(image.convert("RGB"))
        try:
            return self.transform(read_image(os.fspath(image)))
        except (OSError, ValueError) as err:
            raise UserError(f'cannot read the image "{image}" ({err}); give image files') from err

    def _batches(self, images):
        """``(paths or None, tensor batch)``: image paths/folders, PIL images, or a tensor (N, 3, H, W) already
        transformed."""
        if torch.is_tensor(images):
            for start in range(0, images.shape[0], self.batch_size):
                yield None, images[start:start + self.batch_size]
            return
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        images = list(images)
        if images and all(isinstance(i, (str, os.PathLike)) for i in images):
            images = find_images(images)
        bar = None
        if self.progress and len(images) > self.batch_size:
            from tqdm import tqdm

            bar = tqdm(total=len(images), desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True)
        try:
            for start in range(0, len(images), self.batch_size):
                part = images[start:start + self.batch_size]
                paths = [os.fspath(p) if isinstance(p, (str, os.PathLike)) else "" for p in part]
                yield paths, torch.stack([self._load(p) for p in part])
                if bar is not None:
                    bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()

    def _logits(self, images, classnames=None):
        trainer = self.trainer(classnames)
        paths, out = [], []
        with self._evaluating(trainer):
            for batch_paths, batch in self._batches(images):
                out.append(trainer.model_inference(batch.to(trainer.device)).to(MASTER_DTYPE).cpu())
                paths += batch_paths or [""] * batch.shape[0]
        return paths, torch.cat(out)

    def logits(self, images, classnames: Optional[Sequence[str]] = None) -> torch.Tensor:
        """The evaluation logits (N, C), float32 on the CPU, of image files/folders, PIL images or a transformed
        batch."""
        return self._logits(images, classnames)[1]

    def classify(self, images, classnames: Optional[Sequence[str]] = None, top_k: int = 1) -> List[Prediction]:
        """Each image's ``top_k`` most probable classes (softmax over the logits), in input order (folders:
        their files sorted)."""
        names = list(classnames) if classnames is not None else self.classnames
        if int(top_k) != top_k or top_k < 1:
            raise UserError(f"top-k {top_k!r}: give a whole number of at least 1")
        paths, logits = self._logits(images, classnames)
        probs = torch.softmax(logits, dim=-1)
        scores, index = probs.topk(min(int(top_k), probs.shape[-1]), dim=-1)
        return [Prediction(p, [names[int(j)] for j in idx], [float(s) for s in sc])
                for p, idx, sc in zip(paths, index, scores)]

    # -- the classifier as plain CLIP's head -----------------------------------------------------------------
    def _probe(self, trainer, n: int = 4) -> torch.Tensor:
        h, w = self.cfg.INPUT.SIZE
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, h, w, generator=g).to(trainer.device)

    @staticmethod
    def _plain_clip(trainer) -> nn.Module:
        model = getattr(trainer, "model", None)
        clip_model = getattr(model, "clip_model", None) if model is not None else None
        return clip_model if clip_model is not None else trainer.clip_model

    def _class_features(self, trainer, probe):
        """(text features (C, E) or None, model output or None): the class features the evaluation uses."""
        fixed = getattr(trainer, "text_features", None)
        if torch.is_tensor(fixed):  # zero-shot CLIP: hand-written prompts, no prompted model
            return fixed.to(MASTER_DTYPE), None
        with self._evaluating(trainer):
            out = trainer.model(probe)
        features = out.text_features
        return (features.to(MASTER_DTYPE) if features.dim() == 2 else None), out

    def text_features(self, classnames: Optional[Sequence[str]] = None) -> torch.Tensor:
        """The L2-normalised class features (C, E), float32 on the CPU, that the run's evaluation uses for these
        classes. Methods whose class features depend on each image (CoCoOp) have none: one error."""
        trainer = self.trainer(classnames)
        features, _ = self._class_features(trainer, self._probe(trainer, 1))
        if features is None:
            raise UserError(f"{self.method}'s class features depend on each image (prompts conditioned on the "
                            "image features), so it has no fixed class features")
        return features.cpu()

    def head(self, classnames: Optional[Sequence[str]] = None) -> dict:
        """The classifier as a head for plain CLIP: ``{"format", "classnames", "text_features", "logit_scale",
        "backbone"}`` (see the module docstring), after checking on probe images that plain CLIP's image features
        times it give the run's evaluation logits; a run for which they do not is one :class:`UserError` saying
        why."""
        from .prompted_clip import normalise

        names = list(classnames) if classnames is not None else self.classnames
        if tuple(names) in self._heads:
            return dict(self._heads[tuple(names)])
        trainer = self.trainer(classnames)
        probe = self._probe(trainer)
        features, out = self._class_features(trainer, probe)
        refuse = f"{self.method} cannot be exported as a head for plain CLIP"
        if features is None:
            raise UserError(f"{refuse}: its class features depend on each image (prompts conditioned on the image "
                            "features); use load_run(...).classify or tools.predict instead")
        clip_model = self._plain_clip(trainer)
        with self._evaluating(trainer):
            run_logits = trainer.model_inference(probe).to(MASTER_DTYPE)
            image = normalise(clip_model.encode_image(probe).to(MASTER_DTYPE))
        scale = float(clip_model.logit_scale.detach().exp())
        if image.shape[-1] != features.shape[-1]:
            plain = None
        else:
            plain = scale * image @ features.t()
        exact = getattr(getattr(trainer, "precision", None), "effective", "fp32") == "fp32"
        tol = (1e-4 if exact else 2e-2) * max(1.0, scale)
        if plain is None or not torch.allclose(plain, run_logits, rtol=0, atol=tol):
            raise UserError(f"{refuse}: {self._why_not(trainer, out, plain, run_logits, tol)}; use "
                            "load_run(...).classify or tools.predict instead")
        head = {"format": HEAD_FORMAT, "classnames": names, "text_features": features.detach().cpu().contiguous(),
                "logit_scale": scale, "backbone": str(self.cfg.MODEL.BACKBONE.NAME)}
        self._heads[tuple(names)] = head
        return dict(head)

    def _why_not(self, trainer, out, plain, run_logits, tol) -> str:
        """Why the head does not reproduce the run: the method's own words (a ``NOT_A_HEAD`` attribute), else what
        the model output shows."""
        declared = getattr(trainer, "NOT_A_HEAD", None)
        if declared:
            return declared
        prompts = getattr(out, "prompts", None) if out is not None else None
        if prompts is not None and prompts.vision_ops is not None:
            return ("its prompts change the image encoder (vision prompts), so plain CLIP's image features are "
                    "not the ones it classifies")
        if prompts is not None and any(op is not None for op in prompts.vision_block_ops or ()):
            return ("its adapters or low-rank updates change the image encoder (block operations), so plain CLIP's "
                    "image features are not the ones it classifies")
        if plain is None:
            return "its image features are not plain CLIP's (another embedding size)"
        extensions = [e.name for e in getattr(trainer, "extensions", ())]
        if out is not None and extensions and torch.allclose(plain, out.logits.to(MASTER_DTYPE), rtol=0, atol=tol):
            return f"its extension {', '.join(extensions)} mixes another head into the evaluation logits"
        diff = float((plain - run_logits).abs().max())
        return f"its evaluation logits are not plain CLIP's image features times fixed class features (they differ by up to {diff:.3g})"

    def export_head(self, path: str, classnames: Optional[Sequence[str]] = None) -> str:
        """Write :meth:`head` to ``path`` (``.pt`` or ``.safetensors``, atomically); returns the path. Nothing is
        written when the head cannot be made."""
        from .compat import atomic_write

        path = os.fspath(path)
        kind = check_head_path(path)
        head = self.head(classnames)
        if kind == ".pt":
            atomic_write(path, lambda f: torch.save(head, f), binary=True)
        else:
            from safetensors.torch import save

            data = save({"text_features": head["text_features"],
                         "logit_scale": torch.tensor([head["logit_scale"]], dtype=MASTER_DTYPE)},
                        metadata={"format": HEAD_FORMAT, "classnames": json.dumps(head["classnames"]),
                                  "backbone": head["backbone"]})
            atomic_write(path, lambda f: f.write(data), binary=True)
        return path


def check_head_path(path: str) -> str:
    """The head's format from its file name (``.pt`` or ``.safetensors``); the folder must exist."""
    kind = osp.splitext(path)[1].lower()
    if kind not in (".pt", ".safetensors"):
        raise UserError(f'head file "{path}": name it .pt or .safetensors (the two formats written)')
    if kind == ".safetensors":
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            raise UserError("writing .safetensors needs the safetensors package: pip install safetensors (or "
                            "write a .pt file)") from None
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise UserError(f'head file "{path}": the folder "{folder}" does not exist')
    return kind


def read_head(path: str) -> dict:
    """A head written by :meth:`Classifier.export_head`, as the ``.pt`` layout's dict (either format). Plain code
    without this project reads them the same way (``torch.load(path, weights_only=True)``;
    ``safetensors.safe_open``)."""
    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            return {"format": meta["format"], "classnames": json.loads(meta["classnames"]),
                    "text_features": f.get_tensor("text_features"),
                    "logit_scale": float(f.get_tensor("logit_scale")[0]), "backbone": meta.get("backbone")}
    return torch.load(path, map_location="cpu", weights_only=True)
