"""Where a run's scalars go: tensorboard, Weights & Biases, MLflow (not in Dassl, whose trainer writes tensorboard
only).

The trainer's ``write_scalar(tag, value, step)`` sends every scalar to each tracker named in the config key
``TRACKER`` (comma-separated; default ``tensorboard``, as Dassl; ``none``: no tracker). The tags and steps are the
same for all: ``train/<loss term>`` and ``train/lr`` at the training iteration, ``<split>/<metric>`` of an
evaluation at the last training iteration before it (0 for an evaluation-only run).

- ``tensorboard``: event files in ``<OUTPUT_DIR>/tensorboard`` (Dassl's layout); a file system that refuses them
  stops the run with one error line, as for checkpoints.
- ``wandb`` (``pip install wandb``): one W&B run per attempt, its files in the run folder unless ``WANDB_DIR`` says
  otherwise; project, entity and mode from W&B's own variables (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ...).
  The resolved config is the run's config.
- ``mlflow`` (``pip install mlflow-skinny``): one MLflow run per attempt where ``MLFLOW_TRACKING_URI`` (and
  ``MLFLOW_EXPERIMENT_NAME``) say; the resolved config as parameters (``OPTIM.LR``, ...). MLflow 3 refuses to start a
  new local file store (``file:...``) unless ``MLFLOW_ALLOW_FILE_STORE=true``.

An unknown name or a tracker whose package is missing is one error while the config is checked, before the run
folder exists (:func:`check_trackers`); a tracker that cannot start (no login, an unreachable server) is one error
line when the run starts; one that fails later is dropped with one warning and the run goes on without it.
"""
import importlib
import importlib.util
import os
import os.path as osp
import sys

from dassl.utils import UserError, mkdir_if_missing

__all__ = ["TRACKERS", "parse_trackers", "check_trackers", "open_sinks", "ScalarSinks", "flat_config"]

#: tracker name -> the package it needs (and its pip name)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}


def parse_trackers(value):
    """The tracker names of a ``TRACKER`` value (``"tensorboard,wandb"``; ``none`` or empty: none), checked."""
    names = [n.strip().lower() for n in str(value or "").split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in TRACKERS and n != "none"]
    if unknown or "none" in names:
        raise UserError("TRACKER is {!r}: {}; give a comma-separated list of {}, or none".format(
            value, "unknown tracker " + ", ".join(repr(n) for n in unknown) if unknown else "none cannot be combined",
            ", ".join(TRACKERS)))
    return list(dict.fromkeys(names))


def check_trackers(value):
    """:func:`parse_trackers`, and every tracker's package importable (before anything is written)."""
    names = parse_trackers(value)
    for name in names:
        module, pip_name = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError("TRACKER {}: the {} package is not installed; pip install {} (or the project's "
                            "[trackers] extra), or leave {} out of TRACKER".format(name, module, pip_name, name))
    return names


def flat_config(cfg, prefix=""):
    """``{"OPTIM.LR": 0.002, ...}``: every leaf of a yacs config."""
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat_config(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def _plain(cfg):
    """The config as plain nested dicts and lists."""
    if isinstance(cfg, dict):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def _first_line(err):
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _run_name(cfg):
    return "{} {} seed{}".format(cfg.TRAINER.NAME or "run", cfg.DATASET.NAME or "", cfg.SEED).replace("  ", " ")


class TensorboardSink:
    name = "tensorboard"

    def __init__(self, cfg, log_dir, purge_step):
        from torch.utils.tensorboard import SummaryWriter

        mkdir_if_missing(log_dir)
        print("Initialize tensorboard (log_dir={})".format(log_dir))
        self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge_step)

    def write(self, tag, value, step):
        self.writer.add_scalar(tag, value, step)

    def close(self):
        self.writer.close()


class WandbSink:
    name = "wandb"

    def __init__(self, cfg, log_dir, purge_step):
        import wandb

        folder = os.environ.get("WANDB_DIR") or cfg.OUTPUT_DIR
        mkdir_if_missing(folder)
        self.run = wandb.init(dir=folder, config=_plain(cfg), name=_run_name(cfg), reinit="create_new")
        print("Initialize wandb (run {}, files in {})".format(self.run.id, folder))

    def write(self, tag, value, step):
        self.run.log({tag: value}, step=step)

    def close(self):
        self.run.finish()


class MlflowSink:
    name = "mlflow"
    #: MLflow's limit on a parameter value's length
    MAX_PARAM = 6000

    def __init__(self, cfg, log_dir, purge_step):
        import mlflow

        self.mlflow = mlflow
        self.client = mlflow.MlflowClient()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=_run_name(cfg),
                                             tags={"output_dir": str(cfg.OUTPUT_DIR)}).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:self.MAX_PARAM]) for k, v in flat_config(cfg).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        print("Initialize mlflow (run {}, tracking URI {})".format(self.run_id, mlflow.get_tracking_uri()))

    def write(self, tag, value, step):
        self.client.log_metric(self.run_id, tag, float(value), step=int(step or 0))

    def close(self):
        self.client.set_terminated(self.run_id)


SINKS = {"tensorboard": TensorboardSink, "wandb": WandbSink, "mlflow": MlflowSink}


class ScalarSinks:
    """The open trackers of a run, written to together (see the module docstring)."""

    def __init__(self, sinks):
        self.sinks = list(sinks)

    @property
    def names(self):
        return [s.name for s in self.sinks]

    def add_scalar(self, tag, value, step=None):
        """Write to every tracker. Tensorboard's ``OSError`` (the file system refused its events) propagates for
        the trainer to report; any other tracker's failure drops that tracker with one warning."""
        for sink in list(self.sinks):
            try:
                sink.write(tag, value, step)
            except OSError:
                if sink.name == "tensorboard":
                    raise
                self._drop(sink, sys.exc_info()[1])
            except Exception as err:  # noqa: BLE001  (a tracker's own failure must not end the run)
                self._drop(sink, err)

    def _drop(self, sink, err):
        self.sinks.remove(sink)
        print("warning: tracker {} failed ({}); the run continues without it".format(sink.name, _first_line(err)),
              file=sys.stderr)
        try:
            sink.close()
        except Exception:  # noqa: BLE001
            pass

    def close(self):
        """Close every tracker; a failure is one warning each (the run's outcome is reported elsewhere)."""
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001
                print("warning: tracker {}'s last scalars were not written ({})".format(
                    sink.name, getattr(err, "strerror", None) or _first_line(err)), file=sys.stderr)


def open_sinks(cfg, log_dir, purge_step=None):
    """Start the trackers ``cfg.TRACKER`` names (default tensorboard); a :class:`ScalarSinks`, or None when there
    is none. A tracker that cannot start is one :class:`UserError` (the ones already started are closed)."""
    names = check_trackers(cfg.get("TRACKER", "tensorboard"))
    sinks = []
    for name in names:
        try:
            sinks.append(SINKS[name](cfg, log_dir, purge_step))
        except Exception as err:  # noqa: BLE001
            ScalarSinks(sinks).close()
            raise UserError("tracker {} could not start: {}; fix its setup (its environment variables, login or "
                            "server) or leave it out of TRACKER".format(name, _first_line(err))) from err
    return ScalarSinks(sinks) if sinks else None
