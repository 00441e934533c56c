"""The sweep loop: submit the jobs whose dependencies are finished, follow them, resubmit failures, report.

Dependencies are handled by waves, not ``--dependency=afterok``: a job is submitted only once every job it waits
for has ``result.json``. So a failed training never leaves its tests pending forever in the queue, states never
depend on Slurm accounting, and the same logic serves the local pool. Everything the loop knows is kept in
``OUTPUT/sweeps/NAME/state.json`` (attempts, Slurm ids, log paths) so that a second sweep command re-attaches
to jobs still in the queue instead of submitting them twice.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .spec import REPO, RESULT_FILE


def sweep_dir(spec):
    out = Path(spec["output"])
    out = out if out.is_absolute() else Path.cwd() / out
    return out / "sweeps" / spec["name"]


def _atomic_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def last_error_line(*paths):
    """The last line of the logs that reads like an error (else the last non-empty line)."""
    lines = []
    for p in paths:
        try:
            with open(p, errors="replace") as f:
                lines += [ln.strip() for ln in f if ln.strip()]
        except OSError:
            pass
    for ln in reversed(lines):
        low = ln.lower()
        if low.startswith("error") or "error:" in low or "exception" in low or "cancelled" in low or "killed" in low:
            return ln
    return lines[-1] if lines else "(no log output)"


def job_status(job, state):
    """Dry-run view: finished / failed (n attempts) / unfinished folder / not started."""
    if job.finished():
        return "finished"
    rec = state.get(job.key, {})
    if rec.get("failed"):
        return f"failed ({rec.get('attempts', 0)} attempts)"
    if job.started():
        return "unfinished (will resume)"
    return "to run"


def dry_run(jobs, spec, out=None):
    out = out or sys.stdout
    state = _load_state(sweep_dir(spec))
    counts = {}
    for job in jobs:
        st = job_status(job, state)
        counts[st.split(" (")[0]] = counts.get(st.split(" (")[0], 0) + 1
        after = f"  after {', '.join(job.after)}" if job.after else ""
        print(f"{st:26s} {job.key}: {' '.join(job.command)}{after}", file=out)
    todo = len(jobs) - counts.get("finished", 0)
    print(f"{len(jobs)} jobs: {counts.get('finished', 0)} finished, {todo} to run"
          + "".join(f", {n} {k}" for k, n in sorted(counts.items()) if k not in ("finished", "to run")), file=out)
    return todo


def _load_state(folder):
    try:
        with open(folder / "state.json") as f:
            return json.load(f).get("jobs", {})
    except (OSError, ValueError):
        return {}


class Sweep:
    def __init__(self, spec, jobs, executor, poll_s=5.0, out=None):
        self.spec, self.jobs, self.executor, self.poll_s = spec, {j.key: j for j in jobs}, executor, poll_s
        self.out = out or sys.stdout
        self.folder = sweep_dir(spec)
        self.max_attempts = spec["max_attempts"]
        old = _load_state(self.folder)
        self.records = {}  # key -> {attempts, slurm_id, log, ...} for jobs submitted by this or an earlier command
        self.state = {}  # key -> done / queued / running / failed / blocked / waiting
        self.attempts = {k: 0 for k in self.jobs}
        self.durations, self.started_at = [], {}
        self.t0 = time.time()
        self.submitted = 0
        for key, job in self.jobs.items():
            if job.finished():
                self.state[key] = "done"
                if key in old:  # keep what an earlier command knew (Slurm id, logs, attempts)
                    self.records[key] = {k: v for k, v in old[key].items() if k in ("slurm_id", "log", "stdout")}
                    self.attempts[key] = int(old[key].get("attempts", 0))
            else:
                self.state[key] = "waiting"
                rec = old.get(key)
                if rec and rec.get("slurm_id") and executor.name == "slurm" and not rec.get("ended"):
                    self.records[key] = rec  # maybe still in the queue: poll() decides
                    self.state[key] = "queued"
                    self.attempts[key] = int(rec.get("attempts", 1))
        self.history = old

    # --- the loop -------------------------------------------------------------------------------------------

    def run(self):
        print(f"sweep {self.spec['name']}: {len(self.jobs)} jobs, "
              f"{sum(s == 'done' for s in self.state.values())} already finished; {self.executor.describe()}",
              file=self.out, flush=True)
        try:
            while True:
                self._update()
                self._submit_ready()
                self._report()
                if not any(s in ("queued", "running") for s in self.state.values()):
                    break
                time.sleep(self.poll_s)
        finally:
            self.executor.shutdown()
            self._report(final=True)
        return self.summary()

    def _update(self):
        active = {k: self.records[k] for k, s in self.state.items() if s in ("queued", "running")}
        states = self.executor.poll(active) if active else {}
        if states is None:
            return
        now = time.time()
        for key, st in states.items():
            if st == "running" and key not in self.started_at:
                self.started_at[key] = now
            if st != "ended":
                self.state[key] = st
                continue
            self.records[key]["ended"] = True
            if self.jobs[key].finished():
                self.state[key] = "done"
                if key in self.started_at:
                    self.durations.append(now - self.started_at.pop(key))
            elif self.attempts[key] >= self.max_attempts:
                self.state[key] = "failed"
                self.records[key]["failed"] = True
            else:
                self.state[key] = "waiting"  # resubmitted below; the run resumes from its last checkpoint
            self.started_at.pop(key, None)
        # a job whose dependency failed for good can never run
        for key, job in self.jobs.items():
            if self.state[key] == "waiting" and any(self.state[d] in ("failed", "blocked") for d in job.after):
                self.state[key] = "blocked"

    def _submit_ready(self):
        ready = [j for k, j in self.jobs.items()
                 if self.state[k] == "waiting" and all(self.state[d] == "done" for d in j.after)]
        if not ready:
            return
        for j in ready:
            self.attempts[j.key] += 1
        records = self.executor.submit([(j, self.attempts[j.key]) for j in ready])
        for j in ready:
            self.records[j.key] = dict(records[j.key], attempts=self.attempts[j.key])
            self.state[j.key] = "queued"
        self.submitted += len(ready)
        self._save()

    # --- reporting ------------------------------------------------------------------------------------------

    def counts(self):
        c = {s: 0 for s in ("done", "running", "queued", "waiting", "failed", "blocked")}
        for s in self.state.values():
            c[s] += 1
        return c

    def eta_s(self):
        c = self.counts()
        left = c["running"] + c["queued"] + c["waiting"]
        if not self.durations or not left:
            return None
        per = sum(self.durations) / len(self.durations)
        # jobs run side by side as many at a time as run now (a cluster grants fewer than the array cap)
        return per * left / max(1, min(self.executor.concurrency, c["running"] or 1, left))

    def _save(self):
        jobs = {}
        for key, job in self.jobs.items():
            rec = dict(self.records.get(key, {}))
            rec.update(state=self.state[key], attempts=self.attempts[key], dirs=job.dirs,
                       command=" ".join(job.command), after=job.after)
            if self.state[key] == "failed":
                rec["error"] = last_error_line(*(p for p in (rec.get("log"), rec.get("stdout")) if p))
            jobs[key] = rec
        eta = self.eta_s()
        _atomic_json(self.folder / "state.json", {"spec": self.spec["name"], "updated": time.time(),
                                                  "counts": self.counts(), "eta_s": eta, "jobs": jobs})

    def _line(self):
        c = self.counts()
        eta = self.eta_s()
        eta_s = "ETA --" if eta is None else f"ETA {int(eta // 60)}m{int(eta % 60):02d}s"
        extra = f", {c['blocked']} blocked" if c["blocked"] else ""
        return (f"[{time.strftime('%H:%M:%S')}] done {c['done']}/{len(self.jobs)}, running {c['running']}, "
                f"queued {c['queued'] + c['waiting']}, failed {c['failed']}{extra}; {eta_s}")

    def _report(self, final=False):
        self._save()
        line = self._line()
        (self.folder / "status.txt").write_text(line + "\n")
        if getattr(self.out, "isatty", lambda: False)() and not final:
            print("\r" + line.ljust(100), end="", file=self.out, flush=True)
        elif line.split("] ", 1)[1] != getattr(self, "_last", None) or final:
            print(("\n" if getattr(self.out, "isatty", lambda: False)() else "") + line if final else line,
                  file=self.out, flush=True)
        self._last = line.split("] ", 1)[1]

    def failures(self):
        out = []
        for key, st in self.state.items():
            if st == "failed":
                rec = self.records.get(key, {})
                logs = [p for p in (rec.get("log"), rec.get("stdout")) if p]
                out.append((key, rec.get("log", "?"), self.attempts[key], last_error_line(*logs)))
        return out

    def summary(self):
        c = self.counts()
        for key, log, attempts, err in self.failures():
            print(f"FAILED {key} after {attempts} attempt(s): {err}\n    log: {log}", file=self.out)
        for key, st in self.state.items():
            if st == "blocked":
                print(f"NOT RUN {key}: waits for a failed job ({', '.join(self.jobs[key].after)})", file=self.out)
        print(f"sweep {self.spec['name']}: {c['done']}/{len(self.jobs)} finished, {self.submitted} submitted by "
              f"this command, {c['failed']} failed, {c['blocked']} not run; wall time {time.time() - self.t0:.1f} s; "
              f"status in {self.folder / 'state.json'}", file=self.out, flush=True)
        return c


def tables(spec, out=None):
    """The spec's tables through ``python -m tools.results`` (its exit status)."""
    out = out or sys.stdout
    from .spec import method_folders

    trainers = method_folders()
    cmd = [sys.executable, "-m", "tools.results", spec["output"], "--protocol", spec["protocol"],
           "--datasets", *spec["datasets"], "--seeds", *map(str, spec["seeds"]),
           "--methods", *[trainers[m] + (" + CasPL" if spec.get("caspl") else "") for m in spec["methods"]]]
    if spec["protocol"] == "fewshot":
        cmd += ["--shots", *map(str, spec["shots"])]
    if spec["protocol"] in ("crossdataset", "dg"):
        cmd += ["--source", spec["source"]]
    print("$ python -m " + " ".join(cmd[2:]), file=out, flush=True)
    proc = subprocess.run(cmd, cwd=Path.cwd(), env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True)
    out.write(proc.stdout)
    if proc.returncode:
        out.write(proc.stderr)
    out.flush()
    return proc.returncode


__all__ = ["Sweep", "dry_run", "tables", "sweep_dir", "last_error_line", "RESULT_FILE"]
