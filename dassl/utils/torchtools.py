"""Checkpoint files, RNG state and small model helpers (``dassl.utils.torchtools``).

Checkpoint layout (same as Dassl 0.6.3): one folder per registered model, holding ``model.pth.tar-<epoch>``
files (1-based epoch), ``model-best.pth.tar`` and a text file ``checkpoint`` naming the newest file. A checkpoint
is a dict with ``state_dict``, ``epoch``, ``optimizer``, ``scheduler`` and ``val_result``; this implementation
adds ``rng_state`` (and the trainer may add more keys) so that a resumed run continues bit for bit.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so an interrupted
save never leaves a truncated checkpoint behind.
"""
import collections
import contextlib
import functools
import hashlib
import os
import os.path as osp
import pickle
import random
import re
import shutil
import warnings
from collections import OrderedDict
from functools import partial

import numpy as np
import torch
import torch.nn as nn

from .errors import BadFileError, CheckpointNotFoundError, UntrustedFileError
from .tools import atomic_write, mkdir_if_missing

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "resume_from_checkpoint",
    "latest_checkpoint_path",
    "get_rng_state",
    "set_rng_state",
    "open_all_layers",
    "open_specified_layers",
    "count_num_param",
    "load_pretrained_weights",
    "init_network_weights",
    "set_bn_to_eval",
    "adjust_learning_rate",
]


def _copy_into(src, f):
    with open(src, "rb") as source:
        shutil.copyfileobj(source, f)


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Save a checkpoint dict to ``save_dir`` and record its name in ``save_dir/checkpoint``.

    Args:
        state (dict): contains ``state_dict``, ``epoch`` (1-based) and optionally ``optimizer``, ``scheduler``,
            ``val_result`` and further keys.
        save_dir (str): folder of one model (``<output dir>/<model name>``).
        is_best (bool): also copy the file to ``model-best.pth.tar``.
        remove_module_from_keys (bool): strip a leading ``module.`` (``nn.DataParallel``) from the weight names.
        model_name (str): file name; default ``model.pth.tar-<epoch>``.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state_dict = state["state_dict"]
        new_state_dict = OrderedDict()
        for k, v in state_dict.items():
            if k.startswith("module."):
                k = k[7:]
            new_state_dict[k] = v
        state["state_dict"] = new_state_dict

    if not model_name:
        model_name = "model.pth.tar-" + str(state["epoch"])
    fpath = osp.join(save_dir, model_name)
    atomic_write(fpath, partial(torch.save, state), binary=True)
    print("Checkpoint saved to {}".format(fpath))

    pointer = "{}\n".format(osp.basename(fpath))
    atomic_write(osp.join(save_dir, "checkpoint"), lambda f: f.write(pointer))

    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), "model-best.pth.tar")
        atomic_write(best_fpath, partial(_copy_into, fpath), binary=True)
        print('Best checkpoint saved to "{}"'.format(best_fpath))


#: The environment variable naming checkpoint files the user trusts to hold any Python object: paths or SHA256
#: digests (hex) of files, separated by ``os.pathsep`` (``:`` on Linux). Only those files are unpickled in full.
TRUST_ENV = "DASSL_TRUSTED_CHECKPOINTS"


def _dassl_globals():
    """What a checkpoint of the original Dassl holds besides tensors and plain values, by name: its warm-up
    scheduler's ``state_dict()`` pickles the ``successor`` scheduler object (Dassl's single_step, multi_step or
    cosine: StepLR, MultiStepLR, CosineAnnealingLR), whose ``__dict__`` holds the optimizer object (sgd, adam,
    amsgrad, adamw or rmsprop), whose state is a ``defaultdict(dict)``, read as a plain ``dict`` (torch's safe
    loader fills no ``defaultdict``). Unpickling these runs no code of the file's choosing: the classes are only
    created and given the file's values, and the engine keeps nothing of them but the successor's plain state."""
    from torch.optim import SGD, Adam, AdamW, RMSprop
    from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR

    allowed = [SGD, Adam, AdamW, RMSprop, StepLR, MultiStepLR, CosineAnnealingLR, collections.Counter, dict]
    if _named_globals_supported():
        allowed.append((_plain_dict, "collections.defaultdict"))
    return allowed


def _plain_dict(*args):
    """Stands for ``collections.defaultdict(dict)`` in an original Dassl checkpoint: an empty plain dict."""
    return {}


@functools.lru_cache(maxsize=1)
def _named_globals_supported():
    """Whether torch's safe loader takes ``(object, "module.name")`` pairs (torch 2.6 and later); without them an
    original Dassl checkpoint whose optimizer has state is refused (naming ``collections.defaultdict``)."""
    try:
        from torch._weights_only_unpickler import _get_user_allowed_globals

        with torch.serialization.safe_globals([(dict, "dassl.probe")]):
            return _get_user_allowed_globals().get("dassl.probe") is dict
    except Exception:
        return False


def _admit(allowed):
    """A context in which torch's safe loader also admits ``allowed`` (nothing more on a torch without
    ``safe_globals``, before 2.5)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped(allowed) if scoped is not None and allowed else contextlib.nullcontext()


def load_checkpoint(fpath):
    """Load a checkpoint file (onto the CPU when CUDA is unavailable), without running code from it.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain Python values, plus, by name, the
    few objects the original Dassl's checkpoints legitimately hold (its warm-up scheduler pickles its successor
    scheduler and that one's optimizer, see :func:`_dassl_globals`), so its checkpoints still load. A file that
    asks for any other Python object (a function, a class) is refused with :class:`UntrustedFileError`, naming
    what it asks for: unpickling it could run any code. A file the user trusts can be named in the environment
    variable ``DASSL_TRUSTED_CHECKPOINTS`` (its path, or the SHA256 of its bytes; several separated by
    ``os.pathsep``); only such a file is unpickled in full.

    Raises:
        ValueError: ``fpath`` is None.
        CheckpointNotFoundError: the file does not exist (a ``FileNotFoundError``).
        UntrustedFileError: the file names Python objects the safe loader does not admit (a ``BadFileError``).
        BadFileError: the file is empty, truncated, corrupt or not a checkpoint (the message says which and what
            to do; PyTorch's own message, which may advise ``weights_only=False``, is not passed on).
    """
    if fpath is None:
        raise ValueError("File path is None")
    fpath = osp.abspath(osp.expanduser(fpath))
    if not osp.exists(fpath):
        raise CheckpointNotFoundError('No checkpoint file at "{}"'.format(fpath))
    map_location = None if torch.cuda.is_available() else "cpu"
    if osp.getsize(fpath) == 0:
        raise _bad_checkpoint(fpath, "the file is empty")
    try:
        checkpoint = _safe_torch_load(fpath, map_location)
    except UntrustedFileError as err:
        if not _trusted(fpath):
            raise _untrusted_checkpoint(fpath, err.names) from None
        print('Loading "{}" with full unpickling: it is trusted by {}'.format(fpath, TRUST_ENV))
        try:
            checkpoint = _torch_load_trusted(fpath, map_location)
        except Exception as err2:
            raise _bad_checkpoint(fpath, "it cannot be unpickled ({})".format(_first_line(err2))) from None
    except Exception as err:  # any failure to decode the file
        print('Unable to load checkpoint from "{}"'.format(fpath))
        raise _bad_checkpoint(fpath, _why_unreadable(fpath)) from err
    if not isinstance(checkpoint, dict):
        raise _bad_checkpoint(fpath, "it holds a {}, not a checkpoint dict".format(type(checkpoint).__name__))
    return checkpoint


def _safe_torch_load(path, map_location):
    """``torch.load(path, weights_only=True)`` admitting, for this call only, what the original Dassl's checkpoints
    hold (:func:`_dassl_globals`) besides tensors and plain values.

    Raises :class:`UntrustedFileError` (with ``names``: the ``module.name`` of each object the file asks for that
    is not admitted) for a file that needs more; any other failure to read the file propagates as torch raises it.
    """
    allowed = _dassl_globals()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)  # garbage makes torch warn about protocols
            with _admit(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _refused_globals(path, err, allowed)
        if names is None:
            raise
        raise UntrustedFileError('"{}" asks for {}'.format(path, ", ".join(names)), names) from None


def _refused_globals(path, err, allowed):
    """The globals a file asks for that the safe loader refused (``None``: ``err`` is no such refusal)."""
    text = str(err)
    if "Weights only load failed" not in text:
        return None
    admitted = {g[1] if isinstance(g, tuple) else "{}.{}".format(g.__module__, g.__qualname__) for g in allowed}
    names = []
    try:  # every global the file names (zip archives: read without unpickling)
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in admitted]
    except Exception:
        pass
    named = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if named and named.group(1) not in names:
        names.insert(0, named.group(1))
    return names or None  # refused for another reason: a damaged file (random bytes read as pickle opcodes)


def _untrusted_checkpoint(fpath, names):
    return UntrustedFileError(
        'refused to load the checkpoint "{}": it asks for {}, which a checkpoint of this project or of Dassl never '
        "holds, and unpickling it could run any code. If you trust the file (you made it), add its path or SHA256 "
        "to the environment variable {} (README, \"Security\")".format(fpath, ", ".join(names), TRUST_ENV),
        names)


def _trusted(fpath):
    """Whether ``DASSL_TRUSTED_CHECKPOINTS`` names ``fpath`` (by path, or by the SHA256 of its bytes)."""
    entries = [e.strip() for e in os.environ.get(TRUST_ENV, "").split(os.pathsep) if e.strip()]
    if not entries:
        return False
    real = osp.realpath(fpath)
    if any(not _is_sha256(e) and osp.realpath(osp.expanduser(e)) == real for e in entries):
        return True
    digests = {e.lower() for e in entries if _is_sha256(e)}
    return bool(digests) and _sha256_of(fpath) in digests


def _is_sha256(text):
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(err):
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _bad_checkpoint(fpath, why):
    return BadFileError(
        'cannot use the checkpoint "{}": {}. Copy it again from where it was made, or train again; if it belongs '
        "to an unfinished run, delete it and the run resumes from an earlier checkpoint or starts again".format(
            fpath, why)
    )


def _why_unreadable(fpath):
    with open(fpath, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return "the archive is truncated or damaged"
    return "it is not a PyTorch checkpoint file (unknown or damaged format)"


def _torch_load_trusted(fpath, map_location):
    """Full unpickling, for a file the user named as trusted (``DASSL_TRUSTED_CHECKPOINTS``) only."""
    try:
        return torch.load(fpath, map_location=map_location, weights_only=False)
    except UnicodeDecodeError:  # written by Python 2
        return torch.load(fpath, map_location=map_location, weights_only=False, encoding="latin1")


def latest_checkpoint_path(fdir):
    """Return the path of the file named in ``fdir/checkpoint`` (the newest checkpoint of one model)."""
    record = osp.join(fdir, "checkpoint")
    if not osp.isfile(record):
        raise CheckpointNotFoundError('No "checkpoint" file in "{}": nothing to resume from'.format(fdir))
    with open(record, "r") as f:
        model_name = f.readline().strip("\n")
    return osp.join(fdir, model_name)


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None, return_checkpoint=False):
    """Restore model, optimizer and scheduler from the newest checkpoint in ``fdir``.

    Returns:
        int: the epoch to start from (the saved 1-based epoch), or ``(epoch, checkpoint)`` when
        ``return_checkpoint`` is true (so the caller can restore the extra keys without reading the file again).
    """
    fpath = latest_checkpoint_path(fdir)
    print('Loading checkpoint from "{}"'.format(fpath))
    checkpoint = load_checkpoint(fpath)
    target = model.module if isinstance(model, nn.DataParallel) else model
    target.load_state_dict(checkpoint["state_dict"])
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer"):
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler"):
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    start_epoch = checkpoint["epoch"]
    print("Previous epoch: {}".format(start_epoch))
    if return_checkpoint:
        return start_epoch, checkpoint
    return start_epoch


def get_rng_state():
    """Snapshot the Python, NumPy, torch CPU and (if initialised) CUDA random states.

    The snapshot holds only tensors and plain values, so it can be saved in a ``weights_only`` checkpoint.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore a snapshot taken by :func:`get_rng_state` (CUDA states only where devices exist)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].cpu().numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
         npst["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states[:n]])


def open_all_layers(model):
    """Put ``model`` in train mode and make all its parameters trainable."""
    model.train()
    for p in model.parameters():
        p.requires_grad = True


def open_specified_layers(model, open_layers):
    """Train only the named top-level children of ``model``; freeze (and eval) the others."""
    if isinstance(model, nn.DataParallel):
        model = model.module
    if isinstance(open_layers, str):
        open_layers = [open_layers]
    for layer in open_layers:
        if not hasattr(model, layer):
            raise ValueError("{} is not an attribute".format(layer))
    for name, module in model.named_children():
        is_open = name in open_layers
        module.train(is_open)
        for p in module.parameters():
            p.requires_grad = is_open


def count_num_param(model=None, params=None):
    """Count all parameters of ``model`` (trainable or not), or of an iterable of tensors / param-group dicts."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        total = 0
        for p in params:
            if isinstance(p, dict):
                total += sum(q.numel() for q in p["params"])
            else:
                total += p.numel()
        return total
    raise ValueError("model and params must be provided")


def load_pretrained_weights(model, weight_path):
    """Copy the weights of ``weight_path`` whose names and sizes match into ``model`` (others are skipped)."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    model_dict = model.state_dict()
    new_state_dict = OrderedDict()
    matched_layers, discarded_layers = [], []
    for k, v in state_dict.items():
        if k.startswith("module."):
            k = k[7:]
        if k in model_dict and model_dict[k].size() == v.size():
            new_state_dict[k] = v
            matched_layers.append(k)
        else:
            discarded_layers.append(k)
    model_dict.update(new_state_dict)
    model.load_state_dict(model_dict)
    if not matched_layers:
        warnings.warn("Cannot load {} (check the key names manually)".format(weight_path))
    else:
        print("Successfully loaded pretrained weights from {}".format(weight_path))
        if discarded_layers:
            print("Layers discarded due to unmatched keys or size: {}".format(discarded_layers))


def init_network_weights(model, init_type="normal", gain=0.02):
    """Initialise conv/linear/norm layers of ``model`` (``normal``, ``xavier``, ``kaiming`` or ``orthogonal``)."""

    def _init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and m.weight is not None and ("Conv" in classname or "Linear" in classname):
            if init_type == "normal":
                nn.init.normal_(m.weight.data, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight.data, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(m.weight.data, gain=gain)
            else:
                raise NotImplementedError("initialization method {} is not implemented".format(init_type))
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif "BatchNorm" in classname or "InstanceNorm" in classname:
            if getattr(m, "weight", None) is not None:
                nn.init.constant_(m.weight.data, 1.0)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(m.bias.data, 0.0)

    model.apply(_init_func)


def set_bn_to_eval(m):
    """``model.apply(set_bn_to_eval)`` puts every BatchNorm layer in eval mode."""
    if "BatchNorm" in m.__class__.__name__:
        m.eval()


def adjust_learning_rate(optimizer, base_lr, epoch, stepsize=20, gamma=0.1, linear_decay=False,
                         final_lr=0, max_epoch=100):
    """Set every group's lr for ``epoch`` (step decay, or linear decay to ``final_lr``)."""
    if linear_decay:
        frac_done = epoch / max_epoch
        lr = frac_done * final_lr + (1.0 - frac_done) * base_lr
    else:
        lr = base_lr * (gamma ** (epoch // stepsize))
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
