"""What the protocol scripts need to know about a method, read from its registered trainer class.

    python -m tools.method_defaults METHOD PROTOCOL [DATASET [SHOTS]]

prints shell assignments (``TRAINER=... CFG_B2N=...``) for ``scripts/method.sh``. ``METHOD`` is a registered
trainer name in any letter case (``mpl``, ``MaPLe``) or a script alias (``zsclip``). The config names come from
the trainer's ``SCRIPT_CONFIGS`` (keys ``base2new``, ``crossdataset``, ``fewshot``, ``digits``; ``<key>@<dataset>``
for a dataset of its own, e.g. CoOp's ``base2new@imagenet``; for few-shot also ``fewshot:<shots>`` and
``fewshot:<shots>@<dataset>``, e.g. ProGrad's epochs by shots and its LAMBDA exceptions; the most specific key
wins); a method that declares none uses ``configs/trainers/<TRAINER>/vit_b16.yaml`` for every protocol.
``SHOTS`` is the few-shot script's third argument (``scripts/method.sh`` passes it; default ``$SHOTS``, else 16).
With ``CASPL=1`` in the environment (``scripts/caspl/run.sh`` sets it) the trainer's ``CASPL_SCRIPT_CONFIGS``
(CasPL's phase-2 configs, same keys) take the place of its ``SCRIPT_CONFIGS`` for each protocol they name: all of
that protocol's ordinary keys are set aside (an ordinary ``base2new@imagenet`` does not win over a CasPL
``base2new``); the protocols they do not name keep the ordinary configs. ``CFG``, ``CFG_B2N``, ... still win.
``METHOD_SETUP`` is the trainer's ``SCRIPT_SETUP`` (empty for most): a script that ``scripts/method.sh`` runs
before the protocol (see there). Unknown names exit with status 2 and the list.
"""
from __future__ import annotations

import os
import shlex
import sys

#: script protocols of methods that do not train (zero-shot CLIP) -> the evaluation they run
ZERO_SHOT_PROTOCOLS = {"base2new_test": "zeroshot", "xd_test": "zeroshot_xd", "dg_test": "zeroshot_dg"}
PROTOCOLS = ("base2new_train", "base2new_test", "xd_train", "xd_test", "dg_test", "fewshot_train")


def find_trainer(name: str):
    import trainers  # noqa: F401  (registers every method)
    from dassl.engine import TRAINER_REGISTRY

    names = TRAINER_REGISTRY.registered_names()
    wanted = name.lower()
    for registered in names:
        cls = TRAINER_REGISTRY.get(registered)
        aliases = {registered.lower(), *(a.lower() for a in getattr(cls, "SCRIPT_ALIASES", ()))}
        if wanted in aliases:
            return registered, cls
    raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(sorted(names))}")


def script_shots(arg: str, environ) -> str:
    """The few-shot script's shots: its third argument when that is a number, else ``$SHOTS``, else 16."""
    return arg if str(arg).isdigit() else environ.get("SHOTS") or "16"


def protocol_of(key: str) -> str:
    """The protocol of a config key: ``fewshot:16@dtd`` -> ``fewshot``."""
    return key.split("@", 1)[0].split(":", 1)[0]


def script_configs(cls, caspl: bool = False) -> dict:
    """The trainer's config names by key; with ``caspl``, its ``CASPL_SCRIPT_CONFIGS`` replace the keys of each
    protocol they name (the ordinary defaults of the other protocols are kept, made explicit first)."""
    configs = dict(getattr(cls, "SCRIPT_CONFIGS", {}) or {})
    own = dict(getattr(cls, "CASPL_SCRIPT_CONFIGS", {}) or {}) if caspl else {}
    if own:
        b2n = configs.get("base2new", "vit_b16")
        configs.setdefault("crossdataset", b2n)  # the ordinary fallbacks, before a CasPL base2new replaces b2n
        configs.setdefault("fewshot", b2n)
        replaced = {protocol_of(k) for k in own}
        configs = {k: v for k, v in configs.items() if protocol_of(k) not in replaced}
        configs.update(own)
    return configs


def defaults(name: str, protocol: str, dataset: str = "", shots: str = "", caspl: bool = False) -> dict:
    trainer, cls = find_trainer(name)
    if protocol not in PROTOCOLS:
        raise KeyError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    configs = script_configs(cls, caspl)
    b2n = configs.get("base2new", "vit_b16")
    env = {
        "TRAINER": trainer,
        "CFG_B2N": b2n,
        "CFG_XD": configs.get("crossdataset", b2n),
        "CFG_FS": configs.get("fewshot", b2n),
        "CFG_DIGITS": configs.get("digits", "tiny_digits"),
        "PROTO": protocol,
        # a script scripts/method.sh runs first (an earlier phase the method needs, e.g. PromptKD's teacher)
        "METHOD_SETUP": getattr(cls, "SCRIPT_SETUP", "") or "",
    }
    if getattr(cls, "TRAINS", True) is False:  # zero-shot CLIP: evaluation only, on another method's configs
        if protocol not in ZERO_SHOT_PROTOCOLS:
            raise KeyError(f"{trainer} does not train: use {', '.join(ZERO_SHOT_PROTOCOLS)}")
        env["PROTO"] = ZERO_SHOT_PROTOCOLS[protocol]
        env["CFG_DIR"] = getattr(cls, "CONFIG_DIR", "CoOp")
    key = {"base2new_train": "base2new", "base2new_test": "base2new", "fewshot_train": "fewshot"}.get(protocol)
    by_shots = key == "fewshot" and str(shots).isdigit()
    if by_shots and f"{key}:{int(shots)}" in configs:  # the few-shot default for this many shots (not Digits')
        env["CFG_FS"] = configs[f"{key}:{int(shots)}"]
    for candidate in ([f"{key}:{int(shots)}@{dataset}"] if by_shots else []) + [f"{key}@{dataset}"]:
        if key and dataset and candidate in configs:  # a dataset's own config, the most specific first
            env["CFG"] = configs[candidate]
            break
    return env


def with_environment(env: dict, environ) -> dict:
    """The user's environment wins for config names (CFG, CFG_B2N, ...), and for TRAINER only where a script
    family covers several trainers (``TRAINER=ZeroshotCLIP2 bash scripts/zsclip/...``)."""
    out = dict(env)
    for key in ("CFG", "CFG_B2N", "CFG_XD", "CFG_FS", "CFG_DIGITS", "CFG_DIR"):
        if environ.get(key):
            out[key] = environ[key]
    if "CFG_DIR" in env and environ.get("TRAINER"):
        out["TRAINER"] = find_trainer(environ["TRAINER"])[0]
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        shots = script_shots(argv[3] if len(argv) > 3 else "", os.environ)
        caspl = os.environ.get("CASPL", "") not in ("", "0")
        env = with_environment(defaults(argv[0], argv[1], argv[2] if len(argv) > 2 else "", shots, caspl),
                               os.environ)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    print(" ".join(f"export {k}={shlex.quote(v)};" for k, v in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
