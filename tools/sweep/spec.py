"""Sweep specs: a YAML of methods x datasets x seeds x protocol, checked and expanded into the protocol scripts' jobs.

A job is exactly one call of a protocol script, ``bash scripts/<method>/<script>.sh ARGS [-- KEY VALUE ...]``,
with the folders that script writes; it is finished when every one of those folders holds ``result.json``.

Protocols are data (:data:`PROTOCOLS`): a protocol is a list of :class:`Phase` rows. A phase names the script it
runs, the fields that identify one of its jobs (``per``), and the phases it waits for (``after``). A dependency
is resolved by restricting the waiting job's identity to the other phase's ``per`` fields, so a phase keyed by
fewer fields is shared: cross-dataset training is keyed by ``(method, seed)`` and every target dataset's test of
that seed waits for the same ImageNet run. A phase-1 run shared by all seeds (CasPL's boosting prompts) is a phase
with ``per=("dataset",)`` and ``fixed={"seed": 1}``; the phase-2 scripts then list it in ``after``. Adding a
protocol or a phase is one more entry in :data:`PROTOCOLS`.

Method names are the folders of ``scripts/`` (``mpl``, ``coop``, ... or their trainer names, ``MPL``, ``CoOp``);
datasets are the ``configs/datasets/*.yaml`` files whose dataset is in Dassl's ``DATASET_REGISTRY``. The output
folder of each script is derived from the variables its wrapper exports (read by sourcing it with ``exec``
intercepted), by the rules of ``scripts/protocol.sh``.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
RESULT_FILE = "result.json"


class SpecError(ValueError):
    """A sweep spec that cannot run: the message says what is wrong and what to write instead."""


@dataclass(frozen=True)
class Phase:
    name: str  # job identity part, e.g. "train"
    script: str  # scripts/<method>/<script>.sh
    per: tuple  # identity fields among "dataset", "seed", "shots" (the method is always one)
    args: tuple  # script arguments, formatted with the job's fields (and "source")
    after: tuple = ()  # phases whose job (same identity restricted to their `per`) must be finished first
    dataset: str = "{dataset}"  # the dataset the job runs on; "{source}" for a training on the source dataset
    fixed: dict = field(default_factory=dict)  # fields fixed for this phase, e.g. {"seed": 1}
    trains: bool = False  # receives TRAIN.CHECKPOINT_FREQ so that a preempted run resumes from its last epoch


PROTOCOLS = {
    "base2new": (
        Phase("train", "base2new_train", ("dataset", "seed"), ("{dataset}", "{seed}"), trains=True),
        Phase("test", "base2new_test", ("dataset", "seed"), ("{dataset}", "{seed}"), after=("train",)),
    ),
    "crossdataset": (
        Phase("train", "xd_train", ("seed",), ("{source}", "{seed}"), dataset="{source}", trains=True),
        Phase("test", "xd_test", ("dataset", "seed"), ("{dataset}", "{seed}"), after=("train",)),
    ),
    "dg": (
        Phase("train", "xd_train", ("seed",), ("{source}", "{seed}"), dataset="{source}", trains=True),
        Phase("test", "dg_test", ("dataset", "seed"), ("{dataset}", "{seed}"), after=("train",)),
    ),
    "fewshot": (
        Phase("train", "fewshot_train", ("dataset", "seed", "shots"), ("{dataset}", "{seed}", "{shots}"),
              trains=True),
    ),
}

#: ``caspl: true``: CasPL's phase 1 (the boosting prompts, ``scripts/caspl/run.sh boost``), once per dataset and seed 1
#: as the fork, shared by every method and seed of the sweep; the protocol's phases then run through
#: ``scripts/caspl/run.sh METHOD SCRIPT ...`` and wait for it. Cross-dataset and DG: one phase 1 on the source.
CASPL_BOOST = {
    "base2new": Phase("boost", "base2new_train", ("dataset",), ("{dataset}",), fixed={"seed": 1}, trains=True),
    "crossdataset": Phase("boost", "xd_train", (), ("{source}",), dataset="{source}", fixed={"seed": 1},
                          trains=True),
    "dg": Phase("boost", "xd_train", (), ("{source}",), dataset="{source}", fixed={"seed": 1}, trains=True),
    "fewshot": Phase("boost", "fewshot_train", ("dataset",), ("{dataset}",), fixed={"seed": 1}, trains=True),
}
CASPL_RUN = SCRIPTS / "caspl" / "run.sh"

SPEC_KEYS = {
    "name": "sweep name: its logs and status go to OUTPUT/sweeps/NAME/ (default: the spec file's stem)",
    "protocol": "one of " + ", ".join(PROTOCOLS),
    "methods": "list of scripts/ folders (mpl, coop, ...) or trainer names (MPL, CoOp, ...)",
    "datasets": "list of dataset names (configs/datasets/NAME.yaml); the targets for crossdataset/dg",
    "seeds": "list of seeds (default [1, 2, 3])",
    "shots": "fewshot: list of shots (default [16])",
    "source": "crossdataset/dg: the training dataset (default imagenet)",
    "opts": "extra KEY VALUE config pairs for every job (a list, or a mapping KEY: VALUE)",
    "env": "extra environment variables for the scripts (CFG, SHOTS, CFG_XD, ...; with caspl also BOOST_CFG, "
           "INDUCTIVE, BOOST_OPTS)",
    "caspl": "true: every method beside CasPL's boosting prompts (scripts/caspl/run.sh), phase 1 once per dataset "
             "(the source for crossdataset/dg) first (default false)",
    "data": "dataset root, DATA (default: $DATA or ./data)",
    "output": "output root, OUTPUT (default: $OUTPUT or ./output)",
    "checkpoint_every": "training jobs save a checkpoint every N epochs (TRAIN.CHECKPOINT_FREQ, default 1; 0: off)",
    "max_attempts": "a job is submitted at most this many times per sweep command (default 3)",
    "executor": "local or slurm (default local)",
    "local": "local executor: {workers: N} (default: one per visible GPU, else 1)",
    "slurm": "slurm executor: partition, time (minutes), gpus, cpus, mem (e.g. 16GB), account, "
             "max_concurrent, signal_delay_s, constraint, qos",
}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Job:
    key: str  # e.g. "mpl/base2new/train/digits/seed1"
    method: str  # scripts/ folder
    trainer: str
    phase: str
    script: Path
    args: list
    opts: list
    env: dict  # DATA, OUTPUT and the spec's env (the wrapper adds its own)
    dirs: list  # folders the script writes; finished when each holds result.json
    after: list  # keys of jobs that must be finished first

    @property
    def command(self):
        cmd = ["bash", str(self.script.relative_to(REPO))] + [str(a) for a in self.args]
        return cmd + (["--"] + [str(o) for o in self.opts] if self.opts else [])

    def finished(self):
        return all((Path(d) / RESULT_FILE).is_file() for d in self.dirs)

    def started(self):
        return any(Path(d).is_dir() for d in self.dirs)


# --- names -------------------------------------------------------------------------------------------------


def method_folders():
    """scripts/ folders holding protocol scripts -> the trainer name their wrappers export."""
    out = {}
    for d in sorted(p for p in SCRIPTS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        scripts = [p for p in sorted(d.glob("*.sh")) if script_available(d.name, p.stem)]
        if scripts:
            out[d.name] = wrapper_env(scripts[0], {})[1].get("TRAINER", d.name)
    return out


def dataset_names():
    """Dataset config names whose dataset class is registered (importing ``datasets`` registers them)."""
    import datasets  # noqa: F401  (registers every dataset)
    from dassl.data.datasets import DATASET_REGISTRY

    registered = set(DATASET_REGISTRY.registered_names())
    names = []
    for f in sorted((REPO / "configs" / "datasets").glob("*.yaml")):
        with open(f) as fh:
            name = ((yaml.safe_load(fh) or {}).get("DATASET") or {}).get("NAME")
        if name in registered:
            names.append(f.stem)
    return names


_WRAPPERS = {}


def script_available(method, script):
    """Whether ``scripts/<method>/<script>.sh`` exists and runs for that method (zero-shot CLIP has the folder's
    training scripts too, but does not train)."""
    if not (SCRIPTS / method / f"{script}.sh").is_file():
        return False
    from tools.method_defaults import defaults

    try:
        defaults(method, script)
    except KeyError:
        return False
    return True


def wrapper_env(script, env, args=(), caspl=False):
    """(protocol.sh command, environment) that ``scripts/<method>/<script>.sh ARGS...`` runs with: the method's
    defaults from its trainer class (``tools/method_defaults.py``, what ``scripts/method.sh`` reads: a dataset's
    own config from the first argument, the few-shot one by shots from the third), the given ``env`` and this
    process's environment winning for config names as in the scripts."""
    from tools.method_defaults import defaults, script_shots, with_environment

    script = Path(script)
    dataset = str(args[0]) if len(args) > 0 else ""
    shots = script_shots(str(args[2]) if len(args) > 2 else "", {**os.environ, **env})
    key = (str(script), tuple(sorted(env.items())), dataset, shots, caspl)
    if key not in _WRAPPERS:
        base = {k: v for k, v in os.environ.items() if k not in ("TRAINER", "CFG_B2N", "CFG_XD", "CFG_DIGITS",
                                                                   "CFG_FS", "CFG_DIR", "CFG")}
        base.update(env)
        values = with_environment(defaults(script.parent.name, script.stem, dataset, shots, "caspl" if caspl else ""),
                                  base)
        command = values.pop("PROTO")
        _WRAPPERS[key] = (command, {**base, **values})
    return _WRAPPERS[key]


def output_dirs(command, env, output, dataset, seed, shots, source):
    """The folders ``scripts/protocol.sh COMMAND`` writes for these arguments (same rules as protocol.sh)."""
    trainer = env["TRAINER"]
    s = env.get("SHOTS") or "16"
    b2n = env.get("CFG_B2N", "")

    def pick(d, default):
        if env.get("CFG"):
            return env["CFG"]
        if d == "digits" and env.get("CFG_DIGITS"):
            return env["CFG_DIGITS"]
        return default

    xd = env.get("CFG_XD") or b2n
    o = Path(output)
    if command in ("base2new_train", "base2new_test"):
        part = "train_base" if command == "base2new_train" else "test_new"
        return [o / "base2new" / part / dataset / f"shots_{s}" / trainer / pick(dataset, b2n) / f"seed{seed}"]
    if command == "xd_train":
        return [o / "crossdataset" / dataset / trainer / f"{pick(dataset, xd)}_{s}shots" / f"seed{seed}"]
    if command in ("xd_test", "dg_test"):
        src = env.get("SOURCE") or source
        return [o / "crossdataset" / "evaluation" / dataset / trainer / f"{pick(src, xd)}_{s}shots" / f"seed{seed}"]
    if command == "fewshot_train":
        c = pick(dataset, env.get("CFG_FS") or b2n)
        return [o / "fewshot" / dataset / f"shots_{shots}" / trainer / c / f"seed{seed}"]
    if command == "zeroshot":
        c = pick(dataset, b2n)
        return [o / "base2new" / f"test_{p}" / dataset / f"shots_{s}" / trainer / c / f"seed{seed}"
                for p in ("base", "new")]
    if command in ("zeroshot_xd", "zeroshot_dg"):
        return [o / "crossdataset" / "evaluation" / dataset / trainer / f"{pick(dataset, xd)}_{s}shots" / f"seed{seed}"]
    raise SpecError(f"the wrapper runs protocol.sh {command!r}, which tools/sweep/spec.py does not know; "
                    f"add its output folders to output_dirs()")


# --- loading and checking ----------------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(spec, key, default):
    value = spec.get(key, default)
    if _is_int(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(_is_int(v) and v >= 0 for v in value):
        raise SpecError(f"{key!r} must be a non-empty list of non-negative integers, got {value!r}")
    return value


def _int(where, key, value, minimum):
    """``value`` as an int of at least ``minimum`` (a YAML string of digits is taken too), else one line."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not _is_int(value) or value < minimum:
        raise SpecError(f"{where}: {key!r} must be a whole number >= {minimum}, got {value!r}")
    return value


def _text(where, key, value, what="a string"):
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: {key!r} must be {what}, got {value!r}")
    return value


_SCALARS = (str, int, float, bool)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
#: slurm's --mem: a number of megabytes, or with a unit K, M, G or T (an optional B is accepted, as in "32GB")
_MEM_RE = re.compile(r"^[0-9]+([KMGTkmgt][Bb]?)?$")
#: the checks of the local: and slurm: sections (and of the command-line flags that override them):
#: key -> (minimum for a whole number | None for text, what is allowed)
SECTION_VALUES = {
    "local": {"workers": (1, None)},
    "slurm": {"partition": (None, "a partition name"), "time": (1, None), "gpus": (0, None), "cpus": (1, None),
              "mem": (None, "a memory size such as 16000 (MB), 32G or 32GB"), "account": (None, "an account name"),
              "max_concurrent": (1, None), "signal_delay_s": (0, None), "constraint": (None, "a node feature"),
              "qos": (None, "a QOS name")},
}


def check_section(section, values, where="the spec"):
    """The ``local:`` or ``slurm:`` mapping with every value checked (type and range); returns a checked copy.

    Raises :class:`SpecError` naming the key, the value and what is allowed."""
    keys = SECTION_VALUES[section]
    if values is None:
        values = {}
    if not isinstance(values, dict) or set(values) - set(keys):
        raise SpecError(f"{where}: {section!r} must be a mapping with the keys {', '.join(keys)}, got {values!r}")
    out = {}
    for key, value in values.items():
        minimum, what = keys[key]
        name = f"{section}.{key}"
        if minimum is not None:
            out[key] = _int(where, name, value, minimum)
        elif key == "mem":
            text = str(value) if _is_int(value) else value
            if not isinstance(text, str) or not _MEM_RE.match(text):
                raise SpecError(f"{where}: {name!r} must be {what}, got {value!r}")
            out[key] = text
        else:
            out[key] = _text(where, name, value, what)
    return out


def check_name(name, where="the spec"):
    """The sweep's name: one folder name under ``OUTPUT/sweeps/`` (letters, digits, ``_ . + -``), so nothing the
    sweep writes can land outside the output folder."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise SpecError(f"{where}: 'name' must be one folder name (letters, digits, '_', '.', '+', '-'; not "
                        f"starting with '.' or '-'), got {name!r}; its logs and status go to OUTPUT/sweeps/NAME/")
    return name


def _names(spec, key):
    value = spec.get(key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise SpecError(f"{key!r} must be a non-empty list of names ({SPEC_KEYS[key]}), got {value!r}")
    return value


def load(path, overrides=None):
    """Read and check a spec file; every error is raised here, before anything runs."""
    path = Path(path)
    try:
        with open(path) as f:
            spec = yaml.safe_load(f)
    except OSError as e:
        raise SpecError(f"cannot read the sweep spec {path}: {e.strerror}")
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {e}")
    if not isinstance(spec, dict):
        raise SpecError(f"{path} must be a YAML mapping with the keys: {', '.join(SPEC_KEYS)}")
    spec = dict(spec)
    spec.setdefault("name", path.stem)
    for k, v in (overrides or {}).items():
        if v is not None:
            spec[k] = v
    return check(spec, str(path))


def check(spec, where="the spec"):
    unknown = sorted(set(spec) - set(SPEC_KEYS), key=str)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid keys: {', '.join(SPEC_KEYS)}")
    check_name(spec.get("name"), where)
    protocol = spec.get("protocol")
    if protocol not in PROTOCOLS:
        raise SpecError(f"{where}: unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    methods = method_folders()
    by_trainer = {t.lower(): m for m, t in methods.items()}
    chosen = []
    for name in _names(spec, "methods"):
        m = name if name in methods else by_trainer.get(name.lower(), name.lower() if name.lower() in methods else None)
        if m is None:
            raise SpecError(f"{where}: unknown method {name!r}; valid methods (scripts/ folders, trainer names): "
                            + ", ".join(f"{m} ({t})" for m, t in methods.items()))
        scripts = [p.script for p in PROTOCOLS[protocol] if script_available(m, p.script)]
        if not scripts:
            raise SpecError(f"{where}: method {name!r} has no script for protocol {protocol!r} "
                            f"(looked for scripts/{m}/{{{','.join(p.script for p in PROTOCOLS[protocol])}}}.sh)")
        chosen.append(m)
    valid = dataset_names()
    ds = _names(spec, "datasets")
    source = spec.get("source", "imagenet")
    if not isinstance(source, str):
        raise SpecError(f"{where}: 'source' must be a dataset name, got {source!r}")
    for d in ds + ([source] if protocol in ("crossdataset", "dg") else []):
        if d not in valid:
            raise SpecError(f"{where}: unknown dataset {d!r}; valid datasets: {', '.join(valid)}")
    opts = spec.get("opts") or []
    if isinstance(opts, dict):
        opts = [x for kv in opts.items() for x in kv]
    if not isinstance(opts, list) or len(opts) % 2 or not all(isinstance(o, _SCALARS) for o in opts):
        raise SpecError(f"{where}: 'opts' must be KEY VALUE pairs of single values (an even-length list or a "
                        f"mapping), got {opts!r}")
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_NAME_RE.match(k) for k in env) or not all(
            isinstance(v, _SCALARS) for v in env.values()):
        raise SpecError(f"{where}: 'env' must be a mapping NAME: VALUE (variable names, single values), got {env!r}")
    executor = spec.get("executor", "local")
    if executor not in ("local", "slurm"):
        raise SpecError(f"{where}: unknown executor {executor!r}; valid executors: local, slurm")
    sections = {section: check_section(section, spec.get(section), where) for section in SECTION_VALUES}
    folders = {}
    for key, default in (("data", os.environ.get("DATA") or "./data"),
                         ("output", os.environ.get("OUTPUT") or "./output")):
        value = spec.get(key) or default
        folders[key] = _text(where, key, value, "a folder path")
    caspl = spec.get("caspl", False)
    if not isinstance(caspl, bool):
        raise SpecError(f"{where}: 'caspl' must be true or false, got {caspl!r}")
    if caspl:
        from tools.method_defaults import find_method

        for m in chosen:
            method = find_method(methods[m])
            if not method.trains or method.name == "CasPL":
                raise SpecError(f"{where}: with caspl: true every method trains beside the boosting prompts; "
                                f"{method.name} does not (remove it, or run it in a spec without caspl)")
    return dict(spec, methods=chosen, datasets=ds, caspl=caspl, seeds=_int_list(spec, "seeds", [1, 2, 3]),
                shots=_int_list(spec, "shots", [16]), source=source, opts=[str(o) for o in opts],
                env={str(k): str(v) for k, v in env.items()}, executor=executor,
                checkpoint_every=_int(where, "checkpoint_every", spec.get("checkpoint_every", 1), 0),
                max_attempts=_int(where, "max_attempts", spec.get("max_attempts", 3), 1),
                data=folders["data"], output=folders["output"], local=sections["local"], slurm=sections["slurm"])


# --- expansion ---------------------------------------------------------------------------------------------


def _abs(p):
    p = Path(p)
    return p if p.is_absolute() else (Path.cwd() / p)


_BOOST_DIRS = {}


def boost_dir(env, script, dataset):
    """The phase-1 folder ``scripts/caspl/run.sh`` uses for ``SCRIPT`` on ``dataset`` (its ``where`` mode, so the
    sweep and the script cannot disagree on BOOST_CFG, INDUCTIVE or BOOST_SEED)."""
    base = {k: v for k, v in os.environ.items() if k not in ("BOOST_CFG", "INDUCTIVE", "BOOST_SEED", "SOURCE")}
    full = dict(base, **env)
    key = (script, dataset, tuple(sorted((k, full.get(k, "")) for k in ("OUTPUT", "BOOST_CFG", "INDUCTIVE",
                                                                         "BOOST_SEED"))))
    if key not in _BOOST_DIRS:
        done = subprocess.run(["bash", str(CASPL_RUN), "where", script, dataset], env=full, capture_output=True,
                              text=True)
        if done.returncode:
            raise SpecError(f"scripts/caspl/run.sh where {script} {dataset}: {done.stderr.strip()}")
        _BOOST_DIRS[key] = done.stdout.strip()
    return _BOOST_DIRS[key]


def expand(spec):
    """The spec's jobs in submission order (dependencies first), without duplicates."""
    jobs = {}
    phases = PROTOCOLS[spec["protocol"]]
    names = {p.name for p in phases}
    output, data = _abs(spec["output"]), _abs(spec["data"])
    env = dict(spec["env"], DATA=str(data), OUTPUT=str(output))
    if spec["protocol"] in ("crossdataset", "dg"):
        env.setdefault("SOURCE", spec["source"])  # the scripts' xd_test/dg_test read the source from SOURCE
    caspl = bool(spec.get("caspl"))
    boost = CASPL_BOOST[spec["protocol"]] if caspl else None
    if caspl:  # phase 1: one job per dataset (or source), whichever methods wait for it
        for dataset in spec["datasets"]:
            fields = dict({"dataset": dataset, "seed": 1, "shots": None, "source": spec["source"]}, **boost.fixed)
            job_key = _key("caspl", spec["protocol"], boost, fields)
            if job_key in jobs:
                continue
            on = boost.dataset.format(**fields)
            benv = dict(env)
            if spec["checkpoint_every"] > 0:
                every = f"TRAIN.CHECKPOINT_FREQ {spec['checkpoint_every']}"
                benv["BOOST_OPTS"] = f"{env.get('BOOST_OPTS', '')} {every}".strip()
            jobs[job_key] = Job(key=job_key, method="caspl", trainer="CasPL", phase=boost.name, script=CASPL_RUN,
                                args=["boost", on, boost.script], opts=[], env=benv,
                                dirs=[boost_dir(env, boost.script, on)], after=[])
    for method in spec["methods"]:
        present = {p.name for p in phases if script_available(method, p.script)}
        for phase in phases:
            if phase.name not in present:
                continue  # e.g. zero-shot CLIP has no training script: its tests wait for nothing
            script = SCRIPTS / method / f"{phase.script}.sh"
            for dataset in spec["datasets"]:
                for seed in spec["seeds"]:
                    for shots in spec["shots"] if "shots" in phase.per else [None]:
                        fields = {"dataset": dataset, "seed": seed, "shots": shots, "source": spec["source"]}
                        fields.update(phase.fixed)
                        job_key = _key(method, spec["protocol"], phase, fields)
                        if job_key in jobs:
                            continue
                        run_on = phase.dataset.format(**fields)
                        after = []
                        for dep in phase.after:
                            assert dep in names, f"phase {phase.name} waits for unknown phase {dep}"
                            if dep in present:
                                dphase = next(p for p in phases if p.name == dep)
                                after.append(_key(method, spec["protocol"], dphase, dict(fields, **dphase.fixed)))
                        opts = list(spec["opts"])
                        if phase.trains and spec["checkpoint_every"] > 0 and "TRAIN.CHECKPOINT_FREQ" not in opts:
                            opts += ["TRAIN.CHECKPOINT_FREQ", str(spec["checkpoint_every"])]
                        args = [a.format(**fields) for a in phase.args]
                        # a dataset's or a shot count's own config (with caspl: the method's CasPL config)
                        command, wenv = wrapper_env(script, env, args, caspl)
                        if command.startswith("zeroshot") and len(args) > 2:
                            args = args[:2]
                        root, runner, run_args = output, script, args
                        if caspl:  # beside the boosting prompts, in the folders run.sh names after phase 1
                            bfields = dict(fields, **boost.fixed)
                            after.append(_key("caspl", spec["protocol"], boost, bfields))
                            tag = Path(boost_dir(env, boost.script, boost.dataset.format(**bfields))).parent.name
                            root, runner, run_args = output / "caspl" / tag, CASPL_RUN, [method, phase.script, *args]
                        jobs[job_key] = Job(
                            key=job_key, method=method, trainer=wenv.get("TRAINER", method), phase=phase.name,
                            script=runner, args=run_args, opts=opts, env=env,
                            dirs=[str(d) for d in output_dirs(command, wenv, root, run_on, fields["seed"],
                                                              fields["shots"], fields["source"])],
                            after=after)
    for job in jobs.values():  # what the spec's env makes of the folders (CFG, SHOTS, ...) stays in the output folder
        outside = [d for d in job.dirs if not _inside(d, output)]
        if outside:
            raise SpecError(f"job {job.key} would write {os.path.normpath(outside[0])}, outside the output folder "
                            f"{output}; the folder names come from the spec's env (CFG, CFG_B2N, CFG_XD, SHOTS, ...): "
                            "use plain names")
    return list(jobs.values())


def _inside(path, folder):
    path, folder = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return os.path.commonpath([path, folder]) == folder and path != folder


def _key(method, protocol, phase, fields):
    parts = [method, protocol, phase.name]
    if "dataset" in phase.per:
        parts.append(fields["dataset"])
    elif phase.dataset != "{dataset}":
        parts.append(phase.dataset.format(**fields))
    if "shots" in phase.per:
        parts.append(f"shots{fields['shots']}")
    parts.append(f"seed{fields['seed']}")
    return "/".join(parts)
