"""Where the jobs run: a local pool of workers, or Slurm through submitit.

Both executors only start jobs and report whether each is ``queued``, ``running`` or ``ended``; whether an
ended job succeeded is decided by the driver from the runs' ``result.json`` files, never from an exit status
or a scheduler's accounting (the test cluster has none, and a crashed run must never count as finished).
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .spec import REPO

class SchedulerError(RuntimeError):
    """Slurm refused a submission or could not be asked about the jobs (``sbatch``/``squeue`` failed); the message
    is one line with Slurm's own words and what to do. ``python -m tools.sweep`` exits with status 3."""


ACTIVE_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SUSPENDED", "STOPPED", "RESV_DEL_HOLD"}
ACTIVE_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}


def _ignore_usr2():
    # Slurm signals every process of the step before a time limit or preemption; the run itself keeps going
    # until submitit has requeued the job (it resumes from its last checkpoint).
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class ScriptCall:
    """The callable submitit pickles: runs one protocol script; ``checkpoint()`` is submitit's contract for
    requeueing on preemption or time-out (the script resumes from the run folder's last checkpoint)."""

    def __init__(self, command, env, cwd=str(REPO)):
        self.command, self.env, self.cwd = list(command), dict(env), cwd

    def __call__(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        print("+ " + " ".join(self.command), flush=True)
        proc = subprocess.run(self.command, env=env, cwd=self.cwd, preexec_fn=_ignore_usr2)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(self.command)} exited with status {proc.returncode}")
        return proc.returncode

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(ScriptCall(self.command, self.env, self.cwd))


class LocalExecutor:
    """One job per visible GPU (``CUDA_VISIBLE_DEVICES`` set to that GPU), or ``workers`` concurrent CPU jobs."""

    name = "local"

    def __init__(self, log_dir, workers=None):
        self.log_dir = Path(log_dir)
        self.gpus = _visible_gpus()
        if workers is None:
            workers = max(1, len(self.gpus))
        self.slots = [self.gpus[i % len(self.gpus)] if self.gpus else None for i in range(workers)]
        self.queue = []  # [(job, attempt)]
        self.procs = {}  # key -> (Popen, slot, log file handle)
        self.free = list(range(len(self.slots)))
        self.concurrency = len(self.slots)

    def describe(self):
        where = f"GPUs {','.join(self.gpus)}" if self.gpus else "CPU"
        return f"local pool: {len(self.slots)} worker(s) on {where}"

    def submit(self, jobs_attempts):
        out = {}
        for job, attempt in jobs_attempts:
            self.queue.append(job)
            out[job.key] = {"log": str(self.log_dir / (job.key.replace("/", "_") + f".attempt{attempt}.log"))}
        return out

    def _start(self, job, log, slot):
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **job.env)
        gpu = self.slots[slot]
        env["CUDA_VISIBLE_DEVICES"] = gpu if gpu is not None else ""
        fh = open(log, "w")
        fh.write("+ " + " ".join(job.command) + "\n")
        fh.flush()
        proc = subprocess.Popen(job.command, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[job.key] = (proc, slot, fh)

    def poll(self, records):
        states = {}
        for key, (proc, slot, fh) in list(self.procs.items()):
            if proc.poll() is None:
                states[key] = "running"
            else:
                fh.close()
                self.free.append(slot)
                del self.procs[key]
                states[key] = "ended"
        while self.queue and self.free:
            job = self.queue.pop(0)
            self._start(job, records[job.key]["log"], self.free.pop(0))
            states[job.key] = "running"
        for job in self.queue:
            states[job.key] = "queued"
        return states

    def shutdown(self):
        for proc, _, fh in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
            fh.close()


def _is_submission_failure(err):
    """sbatch exited with an error (submitit's FailedJobError) or could not be started at all."""
    return type(err).__name__ == "FailedJobError" or isinstance(err, (OSError, subprocess.SubprocessError))


def _slurm_words(text, err):
    """Slurm's error lines as one line (``sbatch: error: `` prefixes dropped)."""
    if isinstance(err, OSError) and not text.strip():
        return f"sbatch cannot be run ({err.strerror or err})"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    words = [ln.split("error:", 1)[1].strip() if "error:" in ln else ln for ln in lines]
    line = "; ".join(dict.fromkeys(w for w in words if w)) or "no message"
    return line if len(line) <= 400 else line[:397] + "..."


def _visible_gpus():
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class SlurmExecutor:
    """Job arrays through submitit's Slurm executor; states from ``squeue`` (no accounting needed).

    Each submission (the jobs that became ready at one time) is one array, capped at ``max_concurrent`` running
    tasks (``--array=...%N``). The batch script carries ``--signal=USR2@signal_delay_s``: on preemption or an
    approaching time limit submitit calls :meth:`ScriptCall.checkpoint` and requeues the same job id, which
    resumes from the run's last checkpoint.
    """

    name = "slurm"
    #: how long ``squeue`` may fail in a row (a restarting controller) before the sweep stops with one line
    squeue_patience_s = 600.0

    def __init__(self, log_dir, partition=None, time=60, gpus=None, cpus=None, mem=None, account=None,
                 max_concurrent=256, signal_delay_s=90, constraint=None, qos=None, job_name="sweep"):
        try:
            import submitit
        except ImportError:
            raise RuntimeError("the slurm executor needs submitit: python3 -m pip install submitit==1.5.4")
        self.log_dir = Path(log_dir)
        self.executor = submitit.SlurmExecutor(folder=str(self.log_dir / "%j"), max_num_timeout=3)
        params = dict(time=int(time), array_parallelism=int(max_concurrent), signal_delay_s=int(signal_delay_s),
                      job_name=job_name,
                      setup=[f"cd {REPO}", f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}"])
        for k, v in (("partition", partition), ("gpus_per_node", gpus), ("cpus_per_task", cpus), ("mem", mem),
                     ("account", account), ("constraint", constraint), ("qos", qos)):
            if v is not None:
                params[k] = v
        self.executor.update_parameters(**params)
        self.concurrency = int(max_concurrent)
        self.params = params

    def describe(self):
        shown = {k: v for k, v in self.params.items() if k not in ("setup", "job_name")}
        return "slurm (submitit): " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))

    def submit(self, jobs_attempts):
        calls = [(job, ScriptCall(job.command, job.env)) for job, _ in jobs_attempts]
        told = io.StringIO()  # submitit prints sbatch's stderr itself before raising: it goes into the one line
        try:
            with contextlib.redirect_stderr(told), self.executor.batch():
                handles = [self.executor.submit(call) for _, call in calls]
        except Exception as err:
            if not _is_submission_failure(err):
                raise
            raise SchedulerError(
                f"sbatch refused the {len(calls)} job(s): {_slurm_words(str(err) or told.getvalue(), err)}; check "
                "the slurm options (partition, account, qos, time, gpus, cpus, mem, constraint) and run the same "
                "command again (finished jobs are skipped)") from None
        return {job.key: {"slurm_id": h.job_id, "log": str(h.paths.stderr), "stdout": str(h.paths.stdout)}
                for (job, _), h in zip(calls, handles)}

    def poll(self, records):
        ids = {r["slurm_id"]: key for key, r in records.items() if r.get("slurm_id")}
        if not ids:
            return {}
        try:
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True)
            failure = _slurm_words(out.stderr, None) if out.returncode else None
        except OSError as err:  # no squeue on this machine
            failure = f"squeue cannot be run ({err.strerror or err})"
        if failure is not None:
            now = time.time()
            self._squeue_failing_since = getattr(self, "_squeue_failing_since", None) or now
            if now - self._squeue_failing_since >= self.squeue_patience_s:
                raise SchedulerError(
                    f"squeue has failed for {now - self._squeue_failing_since:.0f} s ({failure}); the submitted jobs "
                    "may still run: once Slurm answers, run the same command again to follow them (their ids are in "
                    "state.json)")
            if not getattr(self, "_squeue_warned", False):
                print(f"warning: squeue failed ({failure}); keeping the last known states and trying again for "
                      f"{self.squeue_patience_s:.0f} s", file=sys.stderr)
                self._squeue_warned = True
            return None
        self._squeue_failing_since, self._squeue_warned = None, False
        seen = dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
        states = {}
        for sid, key in ids.items():
            st = seen.get(sid)
            states[key] = "queued" if st in ACTIVE_QUEUED else "running" if st in ACTIVE_RUNNING else "ended"
        return states

    def shutdown(self):
        pass  # jobs stay queued in Slurm; a new sweep command attaches to them

