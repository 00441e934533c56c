"""``build_optimizer``: torch optimizers configured from ``cfg.OPTIM`` (``dassl.optim.optimizer``)."""
import warnings

import torch
import torch.nn as nn

__all__ = ["build_optimizer", "AVAI_OPTIMS"]

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def build_optimizer(model, optim_cfg, param_groups=None):
    """Build the optimizer named by ``optim_cfg.NAME``.

    Args:
        model (nn.Module or iterable): the model, or an iterable of parameters / param-group dicts. All
            parameters are passed on, frozen ones included (they never get gradients, so they are not updated).
        optim_cfg (CfgNode): ``cfg.OPTIM``.
        param_groups (list, optional): explicit param groups; then ``STAGED_LR`` is ignored.

    ``EPS`` (not in Dassl) is the denominator term of the adaptive optimizers (adam, amsgrad, adamw, radam,
    rmsprop). With ``STAGED_LR`` the top-level children named in ``NEW_LAYERS`` get ``LR`` and all other parameters
    ``LR * BASE_LR_MULT``.
    """
    optim = optim_cfg.NAME
    lr = optim_cfg.LR
    weight_decay = optim_cfg.WEIGHT_DECAY
    momentum = optim_cfg.MOMENTUM
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    eps = optim_cfg.get("EPS", 1e-8)  # not in Dassl: a config without the key gets torch's default

    if optim not in AVAI_OPTIMS:
        raise ValueError("optim must be one of {}, but got {}".format(AVAI_OPTIMS, optim))

    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("staged_lr will be ignored, if you need to use staged_lr, please bind it with param_groups yourself.")

    if param_groups is None:
        if optim_cfg.STAGED_LR:
            if not isinstance(model, nn.Module):
                raise TypeError("When staged_lr is True, model given to build_optimizer() must be an instance of nn.Module")
            if isinstance(model, nn.DataParallel):
                model = model.module
            new_layers = optim_cfg.NEW_LAYERS
            if isinstance(new_layers, str):
                if new_layers is None:
                    warnings.warn("new_layers is empty (staged_lr is useless)")
                new_layers = [new_layers]
            base_params, new_params = [], []
            for name, module in model.named_children():
                if name in new_layers:
                    new_params += list(module.parameters())
                else:
                    base_params += list(module.parameters())
            param_groups = [
                {"params": base_params, "lr": lr * optim_cfg.BASE_LR_MULT},
                {"params": new_params},
            ]
        elif isinstance(model, nn.Module):
            param_groups = model.parameters()
        else:
            param_groups = model

    if optim == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if optim == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, amsgrad=True)
    if optim == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            dampening=optim_cfg.SGD_DAMPNING,
            nesterov=optim_cfg.SGD_NESTEROV,
        )
    if optim == "rmsprop":
        return torch.optim.RMSprop(
            param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, alpha=optim_cfg.RMSPROP_ALPHA, eps=eps
        )
    if optim == "radam":
        return torch.optim.RAdam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    # adamw
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
