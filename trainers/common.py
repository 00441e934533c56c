"""What every prompt method shares: loading CLIP, class prompts, the prompted CLIP and the trainer base.

A method is two things (see ``trainers/mpl.py`` for the fullest example):

* a *prompt learner*: an ``nn.Module`` holding only learnable parameters, whose ``forward()`` returns a
  :class:`Prompts` -- the text-encoder input and the per-layer token operations (:class:`clip.LayerOp`) for
  each encoder;
* a trainer: a subclass of :class:`PromptTrainer` that names its config block and builds its prompt learner.

Everything else -- precision, freezing CLIP, the optimiser, checkpoints that hold only what is learned,
loading the reference repositories' whole-model checkpoints, computing text features once per evaluation --
lives here, written once.
"""
from __future__ import annotations

import contextlib
import os.path as osp
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import clip
from clip import MASTER_DTYPE, LayerOp
from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint

try:  # this project's engine prints it as one "error:" line
    from dassl.utils import UserError
except ImportError:  # the real Dassl.pytorch has no such class
    class UserError(Exception):
        """A problem with the user's input, explained by the message."""

#: The precisions a method config may ask for (``TRAINER.<M>.PREC``).
PRECISIONS = ("fp32", "fp16", "bf16", "amp")


def load_clip(cfg) -> nn.Module:
    """Load the frozen CLIP named by ``cfg.MODEL.BACKBONE.NAME`` on the CPU, in fp32.

    The name is a released model (``ViT-B/16``), a registered project model (``tiny-digits``) or a checkpoint
    path. Weights are cast to the run's precision later, once the prompt learner has read what it needs.
    """
    name = cfg.MODEL.BACKBONE.NAME
    try:
        model, _ = clip.load(name, device="cpu", precision="fp32")
    except clip.DownloadError as err:  # offline or a bad checksum: the message says which file to put where
        raise UserError(f"CLIP backbone {name!r}: {err}") from err
    except (ValueError, FileNotFoundError) as err:  # neither a registered name nor a checkpoint file
        raise UserError(f"MODEL.BACKBONE.NAME: {err}; give a model name or the path of a CLIP checkpoint") from err
    return model.eval()


def count_learnable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------------------
# Class prompts: token ids and frozen embeddings around learnable context slots
# ----------------------------------------------------------------------------------------------------------
class ClassPrompts(nn.Module):
    """One prompt per class, ``"{prefix} {classname}."``, split around ``n_ctx`` learnable slots.

    The first ``n_ctx`` words of ``prefix`` are placeholders (for example ``"X"`` or the words of an init
    phrase) whose embeddings are replaced by learned context vectors; everything else stays fixed.

    Buffers (not saved in checkpoints: they depend on the class list):
        token_ids:    (C, L)            token ids, used by the text encoder to find EOT
        token_prefix: (C, 1, D)         embedding of SOS
        token_suffix: (C, L-1-n_ctx, D) embeddings after the context slots

    ``class_token_position`` (CoOp's option): ``"end"`` keeps ``[SOS, ctx, name, ".", EOT]``; ``"middle"`` puts
    the class name between the two halves of the context, ``"front"`` before it. EOT does not move.

    >>> prompts = ClassPrompts(clip_model, ["cat", "dog"], "X X a photo of a", n_ctx=2)
    >>> prompts.assemble(ctx).shape   # ctx: (2, D)
    torch.Size([2, 77, D])
    """

    def __init__(self, clip_model: nn.Module, classnames: Sequence[str], prefix: str, n_ctx: int,
                 class_token_position: str = "end"):
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"class token position {class_token_position!r}; choose one of "
                             f"{', '.join(CLASS_TOKEN_POSITIONS)}")
        names = [name.replace("_", " ") for name in classnames]
        texts = [f"{prefix} {name}." if prefix else f"{name}." for name in names]
        ids = clip.tokenize(texts, context_length=clip_model.context_length)
        with torch.no_grad():
            emb = clip_model.token_embedding(ids).to(MASTER_DTYPE)
        self.n_ctx = n_ctx
        self.texts = texts
        self.class_token_position = class_token_position
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1], persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx:], persistent=False)
        # Embedding of the placeholder words, the natural initial value of the learned context.
        self.register_buffer("init_ctx", emb[0, 1:1 + n_ctx].clone(), persistent=False)
        if class_token_position != "end":
            name_lens = [len(clip.tokenizer().encode(name)) for name in names]
            order = _class_token_order(name_lens, n_ctx, ids.shape[1], class_token_position)
            self.register_buffer("token_order", order, persistent=False)

    @property
    def num_classes(self) -> int:
        return self.token_ids.shape[0]

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Token embeddings of every class prompt with ``ctx`` in the context slots.

        Args:
            ctx: (n_ctx, D) shared context, or (C, n_ctx, D) class-specific context.
        Returns:
            (C, L, D) embeddings, positional embedding not yet added.
        """
        c = self.num_classes
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(c, -1, -1)
        ctx = ctx.to(self.token_prefix.dtype)
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        if self.class_token_position == "end":
            return x
        # middle / front: move the class-name tokens (one gather; EOT keeps its position)
        return x.gather(1, self.token_order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


#: Where CoOp's class-name tokens sit relative to the learned context (``TRAINER.COOP.CLASS_TOKEN_POSITION``).
CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def _class_token_order(name_lens: Sequence[int], n_ctx: int, length: int, position: str) -> torch.Tensor:
    """(C, L) source positions that turn CoOp's "end" layout into the "middle" or "front" one.

    "end":    [SOS, ctx_1..ctx_n, name, rest]
    "middle": [SOS, ctx_1..ctx_h, name, ctx_h+1..ctx_n, rest] with h = n // 2
    "front":  [SOS, name, ctx_1..ctx_n, rest]
    """
    half = n_ctx // 2 if position == "middle" else 0
    rows = []
    for n in name_lens:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + n))
        rows.append([0] + ctx[:half] + name + ctx[half:] + list(range(1 + n_ctx + n, length)))
    return torch.tensor(rows, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------
# What a prompt learner returns, and the prompted CLIP that consumes it
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Prompts:
    """The prompts of one forward pass.

    text_embeddings: (C, L, D) text-encoder input (learned context already in place), or None to use the
        plain class prompts ``text_ids`` through CLIP's own embedding (methods with no text prompts).
    text_ids: (C, L) token ids locating EOT.
    text_ops / vision_ops: per-layer token operations (index = layer), or None.
    n_text_prompt: how many tokens after SOS form the text prompt segment at layer 0.
    """

    text_ids: torch.Tensor
    text_embeddings: Optional[torch.Tensor] = None
    text_ops: Optional[List[Optional[LayerOp]]] = None
    vision_ops: Optional[List[Optional[LayerOp]]] = None
    n_text_prompt: int = 0


class PromptedCLIP(nn.Module):
    """Frozen CLIP driven by a prompt learner: ``logits = exp(logit_scale) * cos(image, class text)``.

    Attributes:
        prompt_learner: the only module with learnable parameters.
        clip_model: the frozen CLIP.
    Input shape: image (B, 3, H, W). Output shape: logits (B, C).
    """

    def __init__(self, clip_model: nn.Module, prompt_learner: nn.Module):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.clip_model = clip_model
        self._cached_text: Optional[torch.Tensor] = None

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_model.dtype

    def encode_text(self, prompts: Prompts) -> torch.Tensor:
        """(C, E) L2-normalised class features.

        The encoders cast their inputs and the operations' tensors to the model's dtype (prompts are fp32).
        """
        model = self.clip_model
        if prompts.text_embeddings is None and prompts.text_ops is None:  # plain class prompts
            feats = model.encode_text(prompts.text_ids)
        else:
            emb = prompts.text_embeddings
            if emb is None:
                emb = model.token_embedding(prompts.text_ids)
            feats = model.encode_text_embeddings(emb, prompts.text_ids, ops=prompts.text_ops,
                                                 n_prompt=prompts.n_text_prompt)
        return feats / feats.norm(dim=-1, keepdim=True)

    def encode_image(self, image: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """(B, E) L2-normalised image features."""
        feats = self.clip_model.encode_image(image, ops=prompts.vision_ops)
        return feats / feats.norm(dim=-1, keepdim=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        prompts = self.prompt_learner()
        text = self._cached_text if self._cached_text is not None else self.encode_text(prompts)
        image_features = self.encode_image(image, prompts)
        scale = self.clip_model.logit_scale.exp()
        return scale * image_features @ text.t()

    @contextlib.contextmanager
    def frozen_text_features(self):
        """Within this block, text features are computed once and reused for every batch.

        Valid only while the prompts do not change (evaluation). Methods whose text prompts depend on the
        image (CoCoOp) do not use it.
        """
        with torch.no_grad():
            self._cached_text = self.encode_text(self.prompt_learner())
        try:
            yield
        finally:
            self._cached_text = None


# ----------------------------------------------------------------------------------------------------------
# The trainer base
# ----------------------------------------------------------------------------------------------------------
class PromptTrainer(TrainerX):
    """Dassl ``TrainerX`` for a frozen CLIP with a prompt learner.

    Subclasses set :attr:`CFG_KEY` (``cfg.TRAINER.<CFG_KEY>``), :attr:`MODEL_NAME` (the registered name, which
    is also the checkpoint folder; the reference repositories' names are kept) and implement
    :meth:`build_prompt_learner`. Checkpoints hold only the prompt learner's parameters.
    """

    CFG_KEY: str = ""
    MODEL_NAME: str = "prompt_learner"
    #: Class prompts depend only on learned parameters, so text features can be cached during evaluation.
    CACHE_TEXT_FEATURES: bool = True

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CFG_KEY]

    def check_cfg(self, cfg):
        prec = cfg.TRAINER[self.CFG_KEY].PREC
        if prec not in PRECISIONS:
            raise ValueError(
                f"TRAINER.{self.CFG_KEY}.PREC is {prec!r}; choose one of {', '.join(PRECISIONS)} "
                "(fp16 and amp fall back to fp32 on a CPU)"
            )

    def build_prompt_learner(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_clip_model(self, cfg, classnames: Sequence[str], clip_model: nn.Module) -> nn.Module:
        """The full model; methods with extra frozen parts (PromptSRC's teachers) override this."""
        return PromptedCLIP(clip_model, self.build_prompt_learner(cfg, classnames, clip_model))

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.precision = clip.resolve_precision(self.method_cfg.PREC, self.device)

        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        print(f"Building {type(self).__name__} prompts for {len(classnames)} classes")
        # The prompt learner reads fp32 embeddings; CLIP is cast to the run's precision afterwards.
        self.model = self.build_clip_model(cfg, classnames, clip_model)
        self.precision.cast_model(self.model.clip_model)

        learner = self.model.prompt_learner
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith("prompt_learner."))
        names = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {names}")
        print(f"Number of learnable parameters: {count_learnable(self.model):,}")

        self.model.to(self.device)
        self.optim = build_optimizer(learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(self.MODEL_NAME, learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.use_grad_scaler else None

    # -- training -----------------------------------------------------------------------------------------
    def compute_loss(self, image: torch.Tensor, label: torch.Tensor):
        """Returns (loss, logits). Methods with extra loss terms override this."""
        logits = self.model(image)
        return F.cross_entropy(logits.to(MASTER_DTYPE), label), logits

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.precision.autocast(self.device):
            loss, logits = self.compute_loss(image, label)
        if self.scaler is not None:
            self.model_zero_grad()
            self.detect_anomaly(loss)
            self.scaler.scale(loss).backward()
            for optim in self._optims.values():
                if optim is not None:
                    self.scaler.step(optim)
            self.scaler.update()
        else:
            self.model_backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(logits.to(MASTER_DTYPE), label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, image):
        with self.precision.autocast(self.device):
            return self.model(image).to(MASTER_DTYPE)

    # -- evaluation ---------------------------------------------------------------------------------------
    def test(self, split=None):
        if not self.CACHE_TEXT_FEATURES:
            return super().test(split)
        self.set_model_mode("eval")
        with self.precision.autocast(self.device), self.model.frozen_text_features():
            return super().test(split)

    # -- checkpoints --------------------------------------------------------------------------------------
    def load_model(self, directory, epoch=None):
        """Load learned prompts from ``<directory>/<MODEL_NAME>/model.pth.tar-<epoch>`` (or the newest).

        Accepts this project's checkpoints (prompt parameters only) and the reference repositories'
        (the whole model's state dict, prompt parameters under ``prompt_learner.``).
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given (ignore this if it's done on purpose)")
            return
        for name in self.get_model_names():
            path = self._checkpoint_path(directory, name, epoch)
            checkpoint = load_checkpoint(path)
            state = self.convert_reference_state(checkpoint["state_dict"])
            state = self.convert_state(extract_prompt_state(state))
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint.get("epoch")})')
            module = self._models[name]
            missing, unexpected = module.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f'checkpoint "{path}" does not match the {type(self).__name__} configuration: '
                    f"missing {sorted(missing)}, unexpected {sorted(unexpected)}. Use the same config file "
                    "(prompt depth, context length, add/remove counts) as the training run."
                )

    @staticmethod
    def convert_state(state: dict) -> dict:
        """Map a reference checkpoint's parameter names to this method's (identity by default)."""
        return state

    @staticmethod
    def convert_reference_state(state_dict: dict) -> dict:
        """Map a whole checkpoint before the prompt learner's entries are taken out (identity by default).

        For references that keep learned tensors outside ``prompt_learner`` (IVLP's and VPT's prompts live in the
        encoders' blocks): rename them to ``prompt_learner.<name>``.
        """
        return state_dict

    @staticmethod
    def _checkpoint_path(directory: str, name: str, epoch: Optional[int]) -> str:
        folder = osp.join(directory, name)
        if epoch is not None:
            path = osp.join(folder, f"model.pth.tar-{epoch}")
        else:
            pointer = osp.join(folder, "checkpoint")
            if osp.isfile(pointer):
                with open(pointer) as f:
                    path = osp.join(folder, f.readline().strip())
            else:
                path = osp.join(folder, "model-best.pth.tar")
        if not osp.isfile(path):
            raise UserError(
                f'no checkpoint at "{path}": pass the training run\'s output folder to --model-dir and the '
                "epoch it saved (the number after model.pth.tar-) to --load-epoch"
            )
        return path


def extract_prompt_state(state_dict: dict) -> dict:
    """The prompt learner's entries of a checkpoint, in either format.

    Reference checkpoints (MaPLe, MPL, IVLP) store the whole CustomCLIP: keep ``prompt_learner.*`` and strip
    the prefix. Class-dependent buffers (``token_prefix``/``token_suffix``) are dropped in both formats.
    """
    if any(k.startswith("prompt_learner.") for k in state_dict):
        state_dict = {k[len("prompt_learner."):]: v for k, v in state_dict.items() if k.startswith("prompt_learner.")}
    drop = ("token_prefix", "token_suffix", "token_ids", "init_ctx")
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in drop and not k.startswith("ZS_")}
