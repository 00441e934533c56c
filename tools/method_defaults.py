"""What the protocol scripts need to know about a method, read from its registered trainer class.

    python -m tools.method_defaults METHOD PROTOCOL [DATASET [SHOTS]]

prints shell assignments (``TRAINER=... CFG_B2N=...``) for ``scripts/method.sh``, after checking that the dataset
the protocol reads is prepared (as ``python -m datasets.prepare NAME --check``; one Python start-up for both). ``METHOD`` is a registered
method in any letter case (``mpl``, ``MaPLe``) or an alias (``zsclip``). The config names come from the method's
registration (``scripts`` of :func:`trainers.register_method`: keys ``base2new``, ``crossdataset``, ``fewshot``,
``digits``; ``<key>@<dataset>`` for a dataset of its own, e.g. CoOp's ``base2new@imagenet``; for few-shot also
``fewshot:<shots>`` and ``fewshot:<shots>@<dataset>``, e.g. ProGrad's epochs by shots and its LAMBDA exceptions;
the most specific key wins); a method that names none uses ``configs/trainers/<TRAINER>/vit_b16.yaml``.
``SHOTS`` is the few-shot script's third argument (``scripts/method.sh`` passes it; default ``$SHOTS``, else 16).
With ``VARIANT=<extension>`` in the environment (``scripts/caspl/run.sh`` sets ``VARIANT=caspl``; ``CASPL=1`` is the
same) the method's configs for that extension (its registration's ``variants``, same keys) take the place of the
ordinary ones for each protocol they name: all of that protocol's ordinary keys are set aside (an ordinary
``base2new@imagenet`` does not win over a CasPL ``base2new``); the protocols they do not name keep the ordinary
configs. ``CFG``, ``CFG_B2N``, ... still win. ``METHOD_SETUP`` is the script of the method's earlier run (empty for
most; PromptKD's teacher) that ``scripts/method.sh`` runs before the protocol (see there). Unknown names exit with
status 2 and the list.
"""
from __future__ import annotations

import os
import shlex
import sys

#: script protocols of methods that do not train (zero-shot CLIP) -> the evaluation they run
ZERO_SHOT_PROTOCOLS = {"base2new_test": "zeroshot", "xd_test": "zeroshot_xd", "dg_test": "zeroshot_dg"}
PROTOCOLS = ("base2new_train", "base2new_test", "xd_train", "xd_test", "dg_test", "fewshot_train")


def find_method(name: str):
    """The registered method named ``name`` (any letter case, or an alias)."""
    import trainers

    return trainers.method_of(name)


def script_shots(arg: str, environ) -> str:
    """The few-shot script's shots: its third argument when that is a number, else ``$SHOTS``, else 16."""
    return arg if str(arg).isdigit() else environ.get("SHOTS") or "16"


def protocol_of(key: str) -> str:
    """The protocol of a config key: ``fewshot:16@dtd`` -> ``fewshot``."""
    return key.split("@", 1)[0].split(":", 1)[0]


def script_configs(method, variant: str = "") -> dict:
    """The method's config names by key; with a ``variant`` (an extension, ``caspl``), its configs for it replace
    the keys of each protocol they name (the ordinary defaults of the other protocols are kept, made explicit
    first)."""
    import trainers

    configs = dict(method.scripts)
    own = dict(trainers.extension_named(variant).scripts.get(method.name, {})) if variant else {}
    if own:
        b2n = configs.get("base2new", "vit_b16")
        configs.setdefault("crossdataset", b2n)  # the ordinary fallbacks, before a CasPL base2new replaces b2n
        configs.setdefault("fewshot", b2n)
        replaced = {protocol_of(k) for k in own}
        configs = {k: v for k, v in configs.items() if protocol_of(k) not in replaced}
        configs.update(own)
    return configs


def defaults(name: str, protocol: str, dataset: str = "", shots: str = "", variant: str = "") -> dict:
    method = find_method(name)
    trainer = method.name
    if protocol not in PROTOCOLS:
        raise KeyError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    configs = script_configs(method, variant)
    b2n = configs.get("base2new", "vit_b16")
    env = {
        "TRAINER": trainer,
        "CFG_B2N": b2n,
        "CFG_XD": configs.get("crossdataset", b2n),
        "CFG_FS": configs.get("fewshot", b2n),
        "CFG_DIGITS": configs.get("digits", "tiny_digits"),
        "PROTO": protocol,
        # a script scripts/method.sh runs first (an earlier phase the method needs, e.g. PromptKD's teacher)
        "METHOD_SETUP": method.earlier_run.script if method.earlier_run else "",
        "CFG_DIR": method.config_dir,
    }
    if not method.trains:  # zero-shot CLIP: evaluation only, on another method's configs
        if protocol not in ZERO_SHOT_PROTOCOLS:
            raise KeyError(f"{trainer} does not train: use {', '.join(ZERO_SHOT_PROTOCOLS)}")
        env["PROTO"] = ZERO_SHOT_PROTOCOLS[protocol]
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
    if env.get("PROTO", "").startswith("zeroshot") and environ.get("TRAINER"):
        out["TRAINER"] = find_method(environ["TRAINER"]).name
    return out


def dataset_of(protocol: str, first_arg: str) -> str:
    """The dataset a protocol script reads, from its first argument (``xd_train SEED`` reads ImageNet)."""
    if protocol == "xd_train" and (not first_arg or first_arg.isdigit()):
        return "imagenet"
    return "" if first_arg.isdigit() else first_arg


def check_data(name: str, root: str) -> int:
    """``python -m datasets.prepare NAME --root ROOT --check`` in this process (its messages on stderr, since stdout
    carries the shell assignments); 0 when the dataset is ready."""
    import contextlib

    from datasets.prepare import main as prepare

    with contextlib.redirect_stdout(sys.stderr):
        return prepare([name, "--root", root, "--check"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    first = argv[2] if len(argv) > 2 else ""
    try:
        shots = script_shots(argv[3] if len(argv) > 3 else "", os.environ)
        variant = os.environ.get("VARIANT", "") or ("caspl" if os.environ.get("CASPL", "") not in ("", "0") else "")
        env = with_environment(defaults(argv[0], argv[1], first, shots, variant), os.environ)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    dataset = dataset_of(argv[1], first)
    if dataset and os.environ.get("CHECK_DATA", "1") != "0":  # the protocol's data check, in this process
        if check_data(dataset, os.environ.get("DATA", "./data")) != 0:
            return 2
        env["DATA_CHECKED"] = dataset
    print(" ".join(f"export {k}={shlex.quote(v)};" for k, v in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
