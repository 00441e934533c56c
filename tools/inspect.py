"""``python -m tools.inspect RUN_DIR``: what a finished run learned, in words and pictures.

Reads a run folder as ``train.py`` writes it (``result.json``, ``log.txt`` and the checkpoint
``<run>/<MODEL_NAME>/model.pth.tar-<epoch>``; an eval-only run points at its training run through
``result.json``'s ``model_dir``), rebuilds the run's config from the arguments recorded in ``log.txt`` exactly as
``train.py`` built it, builds the model through the trainer registry (``dassl.engine.build_trainer``), loads the
learned prompts and writes, under ``RUN_DIR/inspect/`` (``--out``):

- ``context_words.txt``: for each learned text context vector (``trainer.model.prompt_learner.ctx``), the
  vocabulary words whose token embeddings are nearest (Euclidean distance, as CoOp's interpretation), with the
  distances; also printed.
- ``tsne.png``: t-SNE of test image features, coloured by class: the frozen CLIP (no prompts) beside the same
  images through the learned prompts; one panel, so labelled, for methods without vision prompts (the features
  are the same). Below :data:`MIN_TSNE_IMAGES` (16) images t-SNE's perplexity would fall under 5 and the picture
  would be noise, so ``pca.png`` (the first two principal components) is drawn instead.
- ``attention_rollout.png`` (ViT backbones): attention rollout (Abnar & Zuidema, 2020: head-averaged attention
  plus identity, multiplied over layers) from CLS to the image patches, for a few test images, without and with
  the prompts, and their difference. Prompt tokens are left out of the rollout (their number can change from layer
  to layer); the attention among CLS and patches is renormalised. For a method whose prompts leave the image
  encoder unchanged (CoOp and the other text-only methods) the two rollouts are one, so the figure shows the image
  and that rollout, and no blank difference panel.
- ``inspect.json``: what was done, with the file names.

The run folder is not modified apart from ``inspect/``. Bad input (no ``result.json``: an unfinished run; no
checkpoint) is one ``error:`` line with exit status 2.
"""
from __future__ import annotations

import argparse
import ast
import json
import os.path as osp
import sys
from pathlib import Path

__all__ = ["main", "load_run", "nearest_words", "attention_rollout", "RunError"]

REPO = Path(__file__).resolve().parents[1]


class RunError(RuntimeError):
    """The folder is not a finished run that can be inspected; the message says what to do."""


# ---------------------------------------------------------------------------------------------- reading the run
def recorded_arguments(log_path: Path) -> dict:
    """The ``** Arguments **`` block of a train.py log, as a dict of Python values."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        start = lines.index("** Arguments **") + 2
    except ValueError:
        raise RunError(f"{log_path} has no '** Arguments **' block: not a log written by train.py") from None
    args = {}
    for line in lines[start:]:
        if line.startswith("*"):
            break
        key, _, value = line.partition(": ")
        key = key.rstrip(":")
        try:
            args[key] = ast.literal_eval(value) if value else ""
        except (ValueError, SyntaxError):
            args[key] = value
    return args


def _resolve(path: str) -> str:
    """A path recorded relative to where the run was started (the repository root for the scripts)."""
    if not path or osp.isabs(path) or osp.exists(path):
        return path
    candidate = REPO / path
    return str(candidate) if candidate.exists() else path


def load_run(run_dir: Path, device: str | None = None):
    """``(trainer, result)``: the run's trainer, built from its recorded arguments, with its prompts loaded."""
    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    log_path = run_dir / "log.txt"
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a folder; give a run folder (the --output-dir of train.py)")
    if not result_path.is_file():
        raise RunError(f"{run_dir} has no result.json: the run did not finish (or this is not a run folder); "
                       "finish it (run the same command again: it resumes) before inspecting it")
    result = json.loads(result_path.read_text())
    sys.path.insert(0, str(REPO))
    from trainers.api import build_trainer, cfg_from_args, parse_args, run_cfg

    opts = ["OUTPUT_DIR", str(run_dir)] + (["USE_CUDA", "False"] if device == "cpu" else [])
    if (run_dir / "config.yaml").is_file():  # the config the run resolved and recorded
        from trainers.checkpoints import read_run_config

        root = _resolve(str(read_run_config(str(run_dir)).DATASET.ROOT))  # relative to where the run started
        cfg = run_cfg(str(run_dir), opts + ["DATASET.ROOT", root])
    else:  # a run from before config.yaml: rebuild it from the arguments its log recorded
        if not log_path.is_file():
            raise RunError(f"{run_dir} has neither config.yaml nor log.txt to rebuild the run's config from")
        args = parse_args([])
        for key, value in recorded_arguments(log_path).items():
            if hasattr(args, key):
                setattr(args, key, value)
        for key in ("root", "config_file", "dataset_config_file"):
            setattr(args, key, _resolve(getattr(args, key) or ""))
        args.opts = list(args.opts or []) + opts
        cfg = cfg_from_args(args)
    trainer = build_trainer(cfg)
    trainer.set_model_mode("eval")
    names = trainer.get_model_names()
    if names:
        model_dir = Path(_resolve(result.get("model_dir") or "") or run_dir) if result.get("eval_only") else run_dir
        epoch = result.get("epochs")
        missing = [str(model_dir / n / f"model.pth.tar-{epoch}") for n in names
                   if not (model_dir / n / f"model.pth.tar-{epoch}").is_file()]
        if missing:
            raise RunError(f"checkpoint not found: {', '.join(missing)}; the run saved no checkpoint of its last "
                           "epoch (TRAIN.CHECKPOINT_FREQ), or the folder was moved without it")
        trainer.load_model(str(model_dir), epoch=epoch)
    return trainer, result


def _clip_of(trainer):
    import clip

    for module in trainer.model.modules():
        if isinstance(module, clip.CLIP):
            return module
    raise RunError(f"trainer {type(trainer).__name__} holds no clip.CLIP model")


# ---------------------------------------------------------------------------------------------- context words
def nearest_words(ctx, token_embedding, k: int = 5):
    """For each row of ``ctx`` ``(n, D)``: the ``k`` nearest vocabulary entries, ``[[(word, distance), ...], ...]``."""
    import torch

    from clip import tokenizer

    dec = tokenizer()
    with torch.no_grad():
        dist = torch.cdist(ctx.float(), token_embedding.float())
        values, ids = dist.topk(k, dim=1, largest=False)
    return [[(dec.decode([int(i)]).strip() or repr(dec.decoder[int(i)]), float(v)) for v, i in zip(vs, row)]
            for vs, row in zip(values, ids)]


def context_words(trainer, k: int) -> tuple[str, list]:
    learner = getattr(trainer.model, "prompt_learner", None)
    ctx = getattr(learner, "ctx", None)
    if ctx is None:
        return f"{trainer.cfg.TRAINER.NAME}: no learned text context (prompt_learner.ctx) to interpret.\n", []
    model = _clip_of(trainer)
    rows = ctx.detach().reshape(-1, ctx.shape[-1])  # class-specific context (n_cls, n_ctx, D) is flattened
    words = nearest_words(rows, model.token_embedding.weight, k)
    per_class = ctx.dim() == 3
    lines = [f"{trainer.cfg.TRAINER.NAME}: the {k} vocabulary words nearest to each learned context vector "
             "(Euclidean distance in the token-embedding space)"]
    for i, row in enumerate(words):
        where = f"class {i // ctx.shape[1]}, context {i % ctx.shape[1] + 1}" if per_class else f"context {i + 1}"
        lines.append(f"{where}: " + ", ".join(f"{w} ({d:.3f})" for w, d in row))
    return "\n".join(lines) + "\n", words


# ---------------------------------------------------------------------------------------------- features
def _test_batches(trainer, max_images: int, batch_size: int = 64):
    """Up to ``max_images`` test images spread evenly over the classes (the test set is in class order)."""
    import torch

    dataset = trainer.test_loader.dataset
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(trainer.dm.dataset.test):
        by_class.setdefault(int(item.label), []).append(i)
    picked, rank = [], 0
    while len(picked) < max_images and any(rank < len(v) for v in by_class.values()):
        picked += [v[rank] for _, v in sorted(by_class.items()) if rank < len(v)][:max_images - len(picked)]
        rank += 1
    picked.sort(key=lambda i: (int(trainer.dm.dataset.test[i].label), i))
    for start in range(0, len(picked), batch_size):
        items = [dataset[i] for i in picked[start:start + batch_size]]
        batch = {"img": torch.stack([it["img"] for it in items]),
                 "label": torch.tensor([int(it["label"]) for it in items])}
        yield trainer.parse_batch_test(batch)


def image_features(trainer, max_images: int):
    """``(frozen, prompted, labels)``: test image features of the frozen CLIP and of the prompted model."""
    import torch

    model = _clip_of(trainer)
    captured = []
    hook = model.visual.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().float()))
    frozen, prompted, labels = [], [], []
    try:
        with torch.no_grad():
            for images, y in _test_batches(trainer, max_images):
                captured.clear()
                trainer.model_inference(images)
                prompted.append(captured[-1])
                captured.clear()
                model.encode_image(images)  # no operations: the frozen CLIP
                frozen.append(captured[-1])
                labels.append(y.cpu())
    finally:
        hook.remove()
    return torch.cat(frozen).cpu(), torch.cat(prompted).cpu(), torch.cat(labels)


#: t-SNE keeps each point's ``perplexity`` nearest neighbours apart from the rest; below 5 its neighbourhoods hold
#: a point or two and the picture is noise (8 points gave perplexity 2.3). With perplexity (n - 1) / 3 that means
#: fewer than 16 images, which are drawn by PCA instead (a linear projection: meaningful for any number of points).
MIN_PERPLEXITY = 5.0
MIN_TSNE_IMAGES = int(3 * MIN_PERPLEXITY) + 1


def _embed(x, seed: int):
    """``(points (n, 2), method name)``: t-SNE from :data:`MIN_TSNE_IMAGES` points on, else PCA."""
    import torch

    x = x / x.norm(dim=1, keepdim=True)
    if len(x) < MIN_TSNE_IMAGES:
        centred = x - x.mean(dim=0, keepdim=True)
        _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
        return (centred.double() @ v[:2].T).numpy(), "PCA"
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x.numpy()), "t-SNE"


def _figure(width: int, height: int, dpi: int = 100):
    """A Figure on its own Agg canvas whose constrained layout keeps titles, labels and legends apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=((width + 1e-3) / dpi, (height + 1e-3) / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path


def _run_title(trainer, result) -> str:
    cfg = trainer.cfg
    return (f"{cfg.TRAINER.NAME} on {cfg.DATASET.NAME} ({result.get('subsample')} classes, seed {cfg.SEED}, "
            f"backbone {cfg.MODEL.BACKBONE.NAME})")


def vision_unchanged(frozen, prompted, atol: float = 1e-6) -> bool:
    """The learned prompts leave the image features as the frozen CLIP's (methods without vision prompts)."""
    import torch

    return torch.allclose(frozen, prompted, atol=atol)


def plot_features(trainer, result, frozen, prompted, labels, classnames, out: Path, seed: int) -> Path:
    """``tsne.png`` (or ``pca.png`` below :data:`MIN_TSNE_IMAGES` images): test image features by class, the
    frozen CLIP beside the prompted model; one panel when the prompts do not change the image features."""
    import math

    same = vision_unchanged(frozen, prompted)
    panels = [("frozen CLIP (no prompts)", frozen), ("with the learned prompts", prompted)]
    if same:
        panels = [(f"frozen CLIP = with the learned prompts ({trainer.cfg.TRAINER.NAME} has no vision prompts: "
                   "the same features)", frozen)]
    n_classes = len(set(labels.tolist()))
    columns = max(1, math.ceil(n_classes / 25))
    fig = _figure(620 * len(panels) + 140 * columns, 640)
    method = None
    for i, (title, feats) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        xy, method = _embed(feats, seed)
        for c in sorted(set(labels.tolist())):
            m = (labels == c).numpy()
            ax.scatter(xy[m, 0], xy[m, 1], s=14, color=f"C{c % 10}", marker="os^Dv<>ph*"[(c // 10) % 10],
                       label=classnames[c] if c < len(classnames) else str(c))
        ax.set_title(title, fontsize=10, wrap=True)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="class", ncols=columns)
    why = "" if method == "t-SNE" else f" (t-SNE needs at least {MIN_TSNE_IMAGES} images)"
    fig.suptitle(f"{method} of {len(labels)} test image features{why}, coloured by class\n"
                 f"{_run_title(trainer, result)}", fontsize=11)
    return _save(fig, out / ("tsne.png" if method == "t-SNE" else "pca.png"))


# ---------------------------------------------------------------------------------------------- attention rollout
def attention_rollout(visual, run, n_tokens: int):
    """Rollout from CLS to the patches while ``run()`` runs ``visual`` once: ``(B, grid, grid)`` maps.

    Each block's attention is recomputed from its input (the attention module computes it with a fused kernel
    and keeps no weights); only CLS and the patches (the first ``n_tokens`` positions) enter the rollout.
    """
    import torch

    rows = []

    def hook(block, inputs):
        x = block.ln_1(inputs[0]).float()
        attn = block.attn
        b, length, width = x.shape
        qkv = torch.nn.functional.linear(x, attn.in_proj_weight.float(), attn.in_proj_bias.float())
        q, k, _ = qkv.view(b, length, 3, attn.heads, width // attn.heads).permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // attn.heads) ** 0.5, dim=-1).mean(1)
        a = weights[:, :n_tokens, :n_tokens]
        rows.append(a / a.sum(-1, keepdim=True))

    handles = [blk.register_forward_pre_hook(hook) for blk in visual.transformer.resblocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    if len(rows) != len(visual.transformer.resblocks):
        raise RunError(f"the image encoder ran {len(rows) / max(len(visual.transformer.resblocks), 1):g} times "
                       "for one batch; the rollout needs exactly one pass")
    eye = torch.eye(n_tokens)
    rollout = eye.expand(rows[0].shape[0], -1, -1)
    for a in rows:
        a = 0.5 * (a.cpu() + eye)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    grid = round((n_tokens - 1) ** 0.5)
    maps = rollout[:, 0, 1:].reshape(-1, grid, grid)
    return maps / maps.amax(dim=(1, 2), keepdim=True)


#: a rollout map (scaled to a maximum of 1) that moves by less than this is the same map (float rounding)
ROLLOUT_ATOL = 1e-4


def plot_rollout(trainer, result, classnames, path: Path, n_images: int) -> Path | None:
    """``attention_rollout.png``: per test image, the image, the frozen CLIP's rollout and, when the prompts change
    the image encoder, the prompted rollout and the difference (a method without vision prompts gets two columns:
    its rollout is the frozen CLIP's, and a difference panel would be blank)."""
    import clip
    import torch
    from matplotlib.ticker import FormatStrFormatter

    model = _clip_of(trainer)
    if not isinstance(model.visual, clip.VisionTransformer):
        return None
    n_classes = len({int(d.label) for d in trainer.dm.dataset.test})
    # one image of each of the first classes (the picker takes the first image of every class first)
    images, labels = next(_test_batches(trainer, min(n_images, n_classes) if n_classes else n_images))
    n_tokens = model.visual.num_tokens
    frozen = attention_rollout(model.visual, lambda: model.encode_image(images), n_tokens)
    prompted = attention_rollout(model.visual, lambda: trainer.model_inference(images), n_tokens)
    with torch.no_grad():
        predicted = trainer.model_inference(images).argmax(1).cpu()
    changed = bool((prompted - frozen).abs().max() > ROLLOUT_ATOL)
    mean = torch.tensor(trainer.cfg.INPUT.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(trainer.cfg.INPUT.PIXEL_STD).view(3, 1, 1)
    n, cols = len(images), 4 if changed else 2
    fig = _figure(cols * 240 + 60 if changed else 640, n * 250 + (90 if changed else 110))
    what = ("Attention rollout from CLS to the image patches (bright: attended; right: red = more attention with "
            "the prompts)" if changed else "Attention rollout from CLS to the image patches (bright: attended)\n"
            f"{trainer.cfg.TRAINER.NAME}'s prompts leave the image encoder as the frozen CLIP's: one rollout")
    fig.suptitle(f"{what}\n{_run_title(trainer, result)}", fontsize=10)
    size = images.shape[-1]

    def name(i):
        return classnames[i] if i < len(classnames) else str(i)

    for i in range(n):
        img = (images[i].cpu().float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = [(f"test image: {name(int(labels[i]))}", None)]
        if changed:
            diff = prompted[i] - frozen[i]
            panels += [("frozen CLIP", frozen), (f"learned prompts (predicts {name(int(predicted[i]))})", prompted),
                       (f"prompts minus frozen (max {diff.abs().max().item():.3f})", diff)]
        else:
            panels += [(f"rollout (predicts {name(int(predicted[i]))})", frozen)]
        for j, (title, maps) in enumerate(panels):
            ax = fig.add_subplot(n, cols, cols * i + j + 1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
            if maps is not None and maps.dim() == 2:  # the difference, on a symmetric scale
                lim = max(float(maps.abs().max()), ROLLOUT_ATOL)
                shown = ax.imshow(maps.numpy(), cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
                bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
                bar.set_ticks([-lim / 2, 0, lim / 2])  # inside the bar: an end tick's label would stick out
                bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))  # no offset or power text
                bar.ax.tick_params(labelsize=7)
                continue
            ax.imshow(img, interpolation="nearest")
            if maps is not None:
                heat = torch.nn.functional.interpolate(maps[i][None, None], size=(size, size), mode="bilinear",
                                                       align_corners=False)[0, 0].numpy()
                ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="bilinear")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- command line
def _parser():
    p = argparse.ArgumentParser(prog="python -m tools.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished run folder (holding result.json and log.txt)")
    p.add_argument("--out", help="output folder (default RUN_DIR/inspect)")
    p.add_argument("--words", type=int, default=5, help="nearest words per context vector (default 5)")
    p.add_argument("--max-images", type=int, default=300, help="test images in the t-SNE (default 300)")
    p.add_argument("--rollout-images", type=int, default=4, help="test images in the rollout figure (default 4)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: ignore a GPU")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    for name, value in (("--words", args.words), ("--max-images", args.max_images),
                        ("--rollout-images", args.rollout_images)):
        if value < 1:
            print(f"error: {name} must be at least 1", file=sys.stderr)
            return 2
    try:
        trainer, result = load_run(run_dir, device=None if args.device == "auto" else args.device)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else run_dir / "inspect"
    out.mkdir(parents=True, exist_ok=True)
    classnames = list(trainer.dm.dataset.classnames) if hasattr(trainer, "dm") else []
    files = {}

    text, words = context_words(trainer, args.words)
    (out / "context_words.txt").write_text(text, encoding="utf-8")
    files["context_words"] = out / "context_words.txt"
    print(text, end="")

    frozen, prompted, labels = image_features(trainer, args.max_images)
    if len(labels) >= 5:
        picture = plot_features(trainer, result, frozen, prompted, labels, classnames, out, args.seed)
        files[picture.stem] = picture
        if picture.stem == "pca":
            print(f"PCA instead of t-SNE: {len(labels)} test images (t-SNE needs at least {MIN_TSNE_IMAGES})")
    else:
        print(f"no feature plot: only {len(labels)} test image(s)")
    rollout = plot_rollout(trainer, result, classnames, out / "attention_rollout.png", args.rollout_images)
    if rollout is not None:
        files["attention_rollout"] = rollout
    else:
        print("no attention rollout: the backbone is not a Vision Transformer")
    summary = {"run_dir": str(run_dir), "method": trainer.cfg.TRAINER.NAME, "dataset": trainer.cfg.DATASET.NAME,
               "test_images_in_features": int(len(labels)), "context_words": words,
               "files": {k: str(v) for k, v in files.items()}}
    tmp = out / "inspect.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "inspect.json")
    for kind, path in files.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
