"""The offline demo's tiny CLIP ("tiny-digits"): its architecture, its contrastive pretraining, its checkpoint.

The model is the project's own CLIP (:class:`clip.CLIP`, OpenAI's parameter names) at a small size: a ViT on
32x32 images and a text transformer that uses the real tokenizer (49,408 tokens, context 77). It is pretrained
from scratch on captioned synthetic digits rendered from fonts (:mod:`pretrain.synthetic`), never on the
handwritten digits it is then evaluated on zero-shot, so the demo measures transfer::

    python -m pretrain.tiny_digits --out tiny-digits.pt [--seed 0] [--threads 2]

The shipped checkpoint took 370 s of pretraining (6 min 15 s in all) on 2 CPU cores and reaches 75.6% zero-shot
accuracy over the 10 classes on the digits' test split (base 0-4: 76.8%, new 5-9: 74.3%).

Training, all contrastive, on batches of generated (image, caption) pairs:

1. caption warm-up (:attr:`PretrainConfig.caption_steps`): the text tower alone, with a supervised contrastive
   loss over captions (captions naming the same digit are positives). At initialisation the image features of
   a small ViT are nearly identical for all images, and a contrastive image-text loss from there collapses both
   towers to constant features (loss ``log(batch)``); text features that already separate the digits avoid it.
2. image-text (:attr:`PretrainConfig.steps`): CLIP's symmetric cross-entropy between image and caption
   features, where every caption that names the image's digit is a positive (the target is spread uniformly over
   them; CLIP's one-hot target would call the other captions of the same digit negatives). The text tower
   learns at :attr:`PretrainConfig.text_lr_scale` times the image tower's rate. The synthetic images start
   easy (large, upright, clean, grey) and reach their full variety after :attr:`PretrainConfig.ramp` of the
   steps.

Reproducible: one seed drives the model's initialisation and the data; every operation is deterministic on the
CPU. The same seed, thread count and torch version give the same file (other thread counts may change the
floating-point sums and so the bits, not the quality).

The checkpoint is a plain state dict with OpenAI's keys, stored like OpenAI's files with half-precision weights
(LayerNorms in fp32), so :func:`clip.build_model` and :func:`clip.load` read it. The repository ships it
(:data:`SHIPPED`, checksum :data:`SHA256`); :func:`checkpoint_path` returns it, or pretrains a copy into the
CLIP cache when it is absent.

The same code makes the demo's larger teacher (:mod:`pretrain.tiny_digits_large`): a :class:`Release` names a
model's architecture, recipe, thread count and shipped file, and :func:`pretrain`, :func:`checkpoint_path` and
:func:`main` take one (default: tiny-digits).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["ARCH", "PretrainConfig", "Release", "SHIPPED", "SHA256", "EVAL_TEMPLATE", "build", "pretrain",
           "zero_shot_accuracy", "save_checkpoint", "checkpoint_path", "release", "main"]

#: ``clip.CLIP(**ARCH)``: a ViT-S/4-like image tower on 32x32 images and a 64-wide text tower
ARCH = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=4,
    vision_width=128,
    vision_patch_size=8,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=2,
)

#: the checkpoint shipped with the repository, and its SHA256
SHIPPED = Path(__file__).resolve().parent / "weights" / "tiny-digits.pt"
SHA256 = "96a89bc5930d3edbfe325f76bca26b7690267a11139dc18c6361da882c034f0b"
#: file name in the CLIP cache when the checkpoint is built there
CACHE_NAME = "tiny-digits.pt"

#: prompt of the zero-shot evaluation (CoOp's default template)
EVAL_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain` (the defaults made the shipped checkpoint)."""

    seed: int = 0                   # model initialisation and data stream
    caption_steps: int = 60         # stage 1: text-only contrastive steps
    caption_lr: float = 1e-3        # stage 1 learning rate
    steps: int = 2500               # stage 2: image-text contrastive steps
    batch_size: int = 128           # image-caption pairs per step (both stages)
    lr: float = 1e-3                # stage 2 peak learning rate of the image tower (AdamW)
    text_lr_scale: float = 0.1      # stage 2: text tower learning rate / image tower learning rate
    weight_decay: float = 0.05      # AdamW, on matrices and embeddings only
    warmup: int = 50                # stage 2 linear warm-up steps, then cosine decay to 0
    ramp: float = 0.4               # fraction of stage 2 over which the synthetic data goes from easy to full
    logit_scale_max: float = 100.0  # CLIP's clamp of the learned temperature


@dataclass(frozen=True)
class Release:
    """A project-pretrained CLIP: its registered name, architecture, recipe and shipped checkpoint.

    :func:`pretrain`, :func:`checkpoint_path` and :func:`main` take one, so every model the project pretrains on
    synthetic digits (``tiny-digits`` here, ``tiny-digits-large`` in :mod:`pretrain.tiny_digits_large`) shares
    this module's code and differs only in these values.
    """

    name: str                 # name registered with clip.register_pretrained
    arch: Dict[str, int]      # clip.CLIP(**arch)
    config: "PretrainConfig"  # the recipe that made the shipped file
    shipped: Path             # the checkpoint in the repository
    sha256: str               # its checksum
    cache_name: str           # file name when built into the CLIP cache
    threads: int              # torch CPU threads of the shipped build (the bits depend on it)
    build_minutes: int        # rough pretraining time on 2 CPU cores, for the message shown when building
    command: str              # the command line that pretrains it


def release() -> Release:
    """The tiny-digits release, read from this module's constants when called."""
    return Release(name="tiny-digits", arch=ARCH, config=PretrainConfig(), shipped=SHIPPED, sha256=SHA256,
                   cache_name=CACHE_NAME, threads=2, build_minutes=6, command="python -m pretrain.tiny_digits")


def build(seed: int = 0, arch: Optional[Dict[str, int]] = None):
    """A freshly initialised CLIP of ``arch`` (default :data:`ARCH`; fp32, train mode)."""
    import clip

    torch.manual_seed(seed)
    return clip.CLIP(**(ARCH if arch is None else arch))


def _multi_positive_ce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row of ``logits`` against the uniform distribution over its ``positive`` entries.

    ``logits`` (N, M); ``positive`` (N, M) bool with at least one True per row. Entries that are ``-inf`` in
    ``logits`` (masked) must not be positive.
    """
    target = positive / positive.sum(1, keepdim=True)
    log_prob = logits.log_softmax(1).masked_fill(~positive, 0.0)
    return -(target * log_prob).sum(1).mean()


def caption_loss(text_features: torch.Tensor, digits: torch.Tensor, scale: float) -> torch.Tensor:
    """Supervised contrastive loss over normalised caption features (N, D); same digit = positive, self excluded."""
    n = len(digits)
    self_pair = torch.eye(n, dtype=torch.bool)
    logits = (scale * text_features @ text_features.T).masked_fill(self_pair, float("-inf"))
    positive = (digits[:, None] == digits[None, :]) & ~self_pair
    return _multi_positive_ce(logits, positive)


def image_text_loss(image_features: torch.Tensor, text_features: torch.Tensor, digits: torch.Tensor,
                    scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss with every caption of the same digit as a positive; features (N, D) normalised."""
    logits = scale * image_features @ text_features.T
    positive = digits[:, None] == digits[None, :]
    return 0.5 * (_multi_positive_ce(logits, positive) + _multi_positive_ce(logits.T, positive.T))


def _normalisation():
    from clip.transforms import OPENAI_MEAN, OPENAI_STD

    return torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]


def _param_groups(model, lr: float, text_lr: float, weight_decay: float):
    """AdamW groups: the image tower and ``logit_scale`` at ``lr``, the text tower at ``text_lr``; weight decay
    on matrices and embeddings (``ndim >= 2``) only."""
    groups = {}
    for name, param in model.named_parameters():
        tower_lr = lr if name.startswith("visual.") or name == "logit_scale" else text_lr
        groups.setdefault((tower_lr, weight_decay if param.ndim >= 2 else 0.0), []).append(param)
    return [{"params": params, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), params in groups.items()]


@contextlib.contextmanager
def _cpu_settings(threads: int):
    """Run with ``threads`` torch threads and deterministic algorithms; restore both afterwards."""
    old_threads, old_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic)


def pretrain(config: PretrainConfig = PretrainConfig(), threads: int = 2, log: Callable[[str], None] = print,
             evaluate_every: int = 0, arch: Optional[Dict[str, int]] = None):
    """Pretrain a CLIP of ``arch`` (default :data:`ARCH`) with ``config`` on ``threads`` CPU threads; return the
    model (fp32, eval mode).

    ``evaluate_every > 0`` logs the zero-shot accuracy on the digits' validation split every that many steps
    (for development; it does not influence training).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    arch = ARCH if arch is None else arch
    if arch["transformer_heads"] != arch["transformer_width"] // 64:
        raise ValueError(f"transformer_heads={arch['transformer_heads']} with transformer_width="
                         f"{arch['transformer_width']}: a checkpoint stores no head count and clip.build_model reads "
                         f"it back as width // 64 = {arch['transformer_width'] // 64}; use that")
    with _cpu_settings(threads):
        return _pretrain(config, log, evaluate_every, arch)


def _pretrain(config: PretrainConfig, log: Callable[[str], None], evaluate_every: int, arch: Dict[str, int]):
    import clip

    from .synthetic import SyntheticDigits

    model = build(config.seed, arch)
    model.train()
    data = SyntheticDigits(seed=config.seed, image_size=arch["image_resolution"])
    mean, std = _normalisation()
    start = time.time()

    # Stage 1: the text tower learns to tell captions of different digits apart.
    text_params = [p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"]
    optimizer = torch.optim.AdamW(text_params, lr=config.caption_lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.98), eps=1e-6)
    scale = model.logit_scale.exp().item()
    for step in range(config.caption_steps):
        _, digits, captions = data.batch(config.batch_size, images=False)
        text_features = F.normalize(model.encode_text(clip.tokenize(captions)), dim=-1)
        loss = caption_loss(text_features, digits, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0 or step == config.caption_steps - 1:
            log(f"captions {step + 1}/{config.caption_steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")

    # Stage 2: image-text contrastive training.
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.lr, config.lr * config.text_lr_scale, config.weight_decay),
        betas=(0.9, 0.98), eps=1e-6,
    )
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    max_log_scale = math.log(config.logit_scale_max)
    for step in range(config.steps):
        factor = _lr_factor(step, config.steps, config.warmup)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        data.difficulty = min(1.0, step / max(1.0, config.ramp * config.steps))
        images, digits, captions = data.batch(config.batch_size)
        image_features = F.normalize(model.encode_image((images - mean) / std), dim=-1)
        text_features = F.normalize(model.encode_text(clip.tokenize(captions)), dim=-1)
        loss = image_text_loss(image_features, text_features, digits, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        if step % 50 == 0 or step == config.steps - 1:
            msg = (f"image-text {step + 1}/{config.steps} loss {loss.item():.4f} "
                   f"scale {model.logit_scale.exp().item():.1f} ({time.time() - start:.0f}s)")
            if evaluate_every and (step % evaluate_every == 0 or step == config.steps - 1):
                acc = zero_shot_accuracy(model.eval(), split="val")
                model.train()
                msg += f" | val zero-shot all {acc['all']:.1%} base {acc['base']:.1%} new {acc['new']:.1%}"
            log(msg)
    return model.eval()


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def zero_shot_accuracy(model, split: str = "test", template: str = EVAL_TEMPLATE) -> Dict[str, float]:
    """Zero-shot accuracy over the 10 classes on a split of the digits dataset (in memory; nothing is written).

    Returns ``{"all", "base", "new"}``: accuracy over all images, over images of classes 0-4 and of 5-9 (still
    choosing among all 10 class names), and ``"n"``, the number of images. The model runs as it is (device,
    dtype); images go through :func:`clip.image_transform` at the model's resolution, as in the dataset code.
    """
    import clip
    from datasets.digits import CLASSNAMES, digit_image, load_sklearn_digits, split_entries

    images, labels = load_sklearn_digits()
    entries = split_entries(labels.tolist())[split]
    index = [int(rel.split("/")[1].split(".")[0]) for rel, _, _ in entries]
    transform = clip.image_transform(model.visual.input_resolution)
    device = next(model.parameters()).device
    batch = torch.stack([transform(digit_image(images[i])) for i in index]).to(device)
    target = torch.tensor([labels[i] for i in index], device=device)
    tokens = clip.tokenize([template.format(c) for c in CLASSNAMES]).to(device)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    image = F.normalize(model.encode_image(batch), dim=-1)
    correct = (image @ text.T).argmax(1) == target
    base = target < (len(CLASSNAMES) + 1) // 2  # labels 0-4, the base classes of the base-to-new protocol
    return {
        "all": correct.sum().item() / len(correct),
        "base": correct[base].sum().item() / base.sum().item(),
        "new": correct[~base].sum().item() / (~base).sum().item(),
        "n": len(index),
    }


def state_dict_for_release(model) -> Dict[str, torch.Tensor]:
    """The model's state dict as OpenAI stores it: half-precision weights, LayerNorms in fp32 (model unchanged)."""
    import copy

    import clip

    return clip.resolve_precision("fp16", "cuda").cast_model(copy.deepcopy(model)).state_dict()


def save_checkpoint(state_dict: Dict[str, torch.Tensor], path: Union[str, Path]) -> Path:
    """Write ``state_dict`` to ``path`` atomically (temporary file in the same folder, then rename).

    The bytes depend only on the tensors (not on the file name), so equal weights give equal checksums.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # torch.save names the archive's folder after the file; a buffer keeps it fixed
    torch.save(state_dict, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def checkpoint_path(cache_dir: Union[str, Path, None] = None, model: Optional[Release] = None) -> str:
    """Path of a release's checkpoint (default tiny-digits): the shipped file if its checksum matches, else a copy
    built in the cache.

    The cache is ``cache_dir``, else :func:`clip.cache_dir` (``$CLIP_CACHE_DIR`` or ``~/.cache/clip``). Building
    runs :func:`pretrain` with the release's config (about 6 minutes on 2 CPU cores for tiny-digits) under a file
    lock, so runs started together build it once.
    """
    import clip
    from clip.download import exclusive_lock, sha256_of

    spec = release() if model is None else model
    if spec.shipped.is_file() and spec.sha256 and sha256_of(spec.shipped) == spec.sha256:
        return str(spec.shipped)
    if spec.shipped.is_file() and not spec.sha256:
        warnings.warn(f"no SHA256 is recorded for {spec.shipped} ({spec.name}), so it cannot be verified; using a "
                      "copy built in the cache")
    elif spec.shipped.is_file():
        warnings.warn(f"{spec.shipped} does not have the expected SHA256 {spec.sha256}; using a copy built in the cache")
    target = clip.cache_dir(cache_dir) / spec.cache_name
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target):
        if not target.is_file():
            print(f"Pretraining the {spec.name} CLIP into {target} ({spec.command}; "
                  f"about {spec.build_minutes} minutes on 2 cores)")
            trained = pretrain(spec.config, threads=spec.threads, arch=spec.arch)
            save_checkpoint(state_dict_for_release(trained), target)
            if spec.sha256 and sha256_of(target) != spec.sha256:
                print(f"Note: the rebuilt checkpoint differs in its bits from the shipped one (SHA256 {spec.sha256}); "
                      "another torch version or thread count changes floating-point sums, not the recipe.")
    return str(target)


def _parse(argv: Optional[Sequence[str]], spec: Optional[Release] = None):
    spec = release() if spec is None else spec
    parser = argparse.ArgumentParser(prog=spec.command, description=f"Pretrain the {spec.name} CLIP on captioned "
                                     "synthetic digits (the offline demo's model).")
    parser.add_argument("--out", required=True, help="checkpoint file to write (OpenAI-format state dict)")
    parser.add_argument("--threads", type=int, default=spec.threads,
                        help=f"torch CPU threads (default {spec.threads}, as the shipped checkpoint)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="log validation zero-shot accuracy every N steps (development; default off)")
    defaults = spec.config
    for f in fields(PretrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help=f"default {getattr(defaults, f.name)}")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, spec: Optional[Release] = None) -> int:
    spec = release() if spec is None else spec
    args = _parse(argv, spec)
    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    print(f"{spec.name} CLIP {spec.arch}")
    print(f"pretraining with {asdict(config)} on {args.threads} thread(s)")
    start = time.time()
    model = pretrain(config, threads=args.threads, evaluate_every=args.eval_every, arch=spec.arch)
    seconds = time.time() - start
    state_dict = state_dict_for_release(model)
    path = save_checkpoint(state_dict, args.out)
    from clip.download import sha256_of

    import clip

    released = clip.build_model(state_dict)
    n_params = sum(p.numel() for p in released.parameters())
    print(f"pretraining took {seconds:.0f}s; wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, "
          f"{n_params:,} parameters), SHA256 {sha256_of(path)}")
    for split in ("val", "test"):
        acc = zero_shot_accuracy(released, split=split)
        print(f"zero-shot on the handwritten digits ({split}, {acc['n']} images, prompt {EVAL_TEMPLATE!r}): "
              f"all {acc['all']:.1%}  base 0-4 {acc['base']:.1%}  new 5-9 {acc['new']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
