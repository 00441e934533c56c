"""Runs that survive anything: killed at random points and resumed, one writer per folder, complete logs, nothing
resumable after bad input, a short terminal header, and train.py on a Dassl without this project's extras.

The kill tests fork the test process (no interpreter start-up per attempt) and SIGKILL the child at a random
point: before a training step, or between writing a checkpoint's temporary file and moving it into place.
"""
import json
import os
import os.path as osp
import random
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

import dassl_tiny as tiny
import train
from dassl.utils import RunLock, RunLockedError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    tiny.write_tiny_images(root)
    return root


def _argv(root, out, *opts):
    # 4 epochs of 3 batches; no numbered checkpoints except the last one (the rolling one does the work)
    return tiny.tiny_argv(root, out, "TRAIN.CHECKPOINT_FREQ", "0", *opts)


def _in_child(argv, kill_at=None, count_file=None):
    """Run train.main(argv) in a forked child; SIGKILL it at its ``kill_at``-th event. Returns the wait status."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            torch.set_num_threads(1)
            devnull = open(os.devnull, "w")
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            sys.stdout = sys.stderr = devnull
            events = [0]

            def tick():
                events[0] += 1
                if events[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            fb, replace = tiny.DasslTinyLinear.forward_backward, os.replace

            def forward_backward(self, batch):
                tick()
                return fb(self, batch)

            def killable_replace(src, dst):
                tick()  # the temporary file is complete, not yet in place
                return replace(src, dst)

            tiny.DasslTinyLinear.forward_backward = forward_backward
            os.replace = killable_replace
            code = train.main(argv)
            if count_file:
                with open(count_file, "w") as f:
                    f.write(str(events[0]))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _weights(out):
    return tiny.final_weights(out, epoch=4)


def _train_steps(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return [e.step for e in acc.Scalars("train/loss")], [e.value for e in acc.Scalars("train/loss")]


@pytest.fixture(scope="module")
def baseline(root):
    out = root / "uninterrupted"
    count = root / "events.txt"
    status = _in_child(_argv(root, out, "TRAIN.CHECKPOINT_ITERS", "1"), count_file=str(count))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return out, int(count.read_text())


@pytest.mark.parametrize("iters", [0, 1])
def test_killed_at_random_points_resumes_bit_identically(root, baseline, iters):
    """Three SIGKILLs at random points (steps, checkpoint writes), then a clean finish: the final weights, the
    accuracy and the tensorboard curve equal the uninterrupted run's; every attempt's log is kept."""
    ref, total_events = baseline
    out = root / f"killed_iters{iters}"
    argv = _argv(root, out, "TRAIN.CHECKPOINT_ITERS", str(iters))
    rng = random.Random(13 + iters)
    kills = [rng.randrange(2, 12) for _ in range(3)]
    for kill_at in kills:
        status = _in_child(argv, kill_at=kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_at
        assert not (out / "result.json").exists()
    status = _in_child(argv)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kills
    assert json.loads((out / "result.json").read_text())["accuracy"] == json.loads(
        (ref / "result.json").read_text())["accuracy"]
    assert _train_steps(out) == _train_steps(ref)  # same curve, no duplicate steps after the resumes
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))
    assert len(logs) == 4  # one per attempt, none overwritten
    finished = json.loads((out / "result.json").read_text())["log_file"]
    assert finished == str(out / logs[-1]) and "Finish training" in (out / logs[-1]).read_text()
    assert not (out / "run.lock").exists()  # the stale locks of the killed attempts were replaced, ours released
    # the numbered checkpoint replaced the rolling one; the temporary files of killed writes were removed
    assert sorted(os.listdir(out / "linear_probe")) == ["checkpoint", "model.pth.tar-4"]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert total_events > 12


def test_killed_log_ends_with_the_last_line_written(root):
    """log.txt is written line by line: after a SIGKILL in epoch 2 it holds epoch 1's lines."""
    out = root / "killed_log"
    # events: 1 file move (config.yaml), 3 steps, 2 file moves (the rolling checkpoint and its pointer), 1 step;
    # killed before the next step
    status = _in_child(_argv(root, out, "TRAIN.PRINT_FREQ", "1"), kill_at=8)
    assert os.WIFSIGNALED(status)
    lines = (out / "log.txt").read_text().splitlines()
    assert lines[-2].startswith("Checkpoint saved to") and lines[-2].endswith("model-last.pth.tar")
    assert lines[-1].startswith("epoch [2/4] batch [1/3] ")


def test_temporary_files_of_killed_writes_are_removed_on_the_next_start(root):
    out = root / "killed_write"
    # events: 1 file move (config.yaml), 3 steps, then the first rolling checkpoint's move into place: killed with
    # its temporary file written
    status = _in_child(_argv(root, out), kill_at=5)
    assert os.WIFSIGNALED(status)
    left = [f for f in os.listdir(out / "linear_probe") if f.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(".model-last.pth.tar.")
    (out / ".result.json.0123456789ab.tmp").write_text("{")  # as a killed write of result.json leaves it
    (out / "notes.tmp").write_text("the user's")  # not named like the project's temporary files: kept
    status = _in_child(_argv(root, out))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert sorted(os.listdir(out / "linear_probe")) == ["checkpoint", "model.pth.tar-4"]
    assert sorted(f for f in os.listdir(out) if f.endswith(".tmp")) == ["notes.tmp"]
    newest = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))[-1]
    assert "Removed 2 temporary file(s) left by an interrupted write" in (out / newest).read_text()


def _one_error(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(root, baseline, tmp_path, capsys,
                                                                       monkeypatch):
    """The third checkpoint (epoch 3's) meets a full disk inside torch.save, whose own error is a RuntimeError
    chain without "no space"; the run stops with one line, exit status 2, and the rerun resumes after epoch 2 to the
    uninterrupted run's weights."""
    from test_file_writes import FillsUp

    out = tmp_path / "full"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        return real_save(obj, FillsUp(f, 500) if len(saves) == 3 else f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert train.main(_argv(root, out)) == 2
    line = _one_error(capsys)
    assert line.startswith("error: no space left on the device of ")
    assert 'while writing "{}"'.format(out / "linear_probe" / "model-last.pth.tar") in line
    assert line.endswith("free space there, then run the same command again; the run resumes from its checkpoint "
                         "after epoch 2")
    assert sorted(os.listdir(out / "linear_probe")) == ["checkpoint", "model-last.pth.tar"]  # nothing half-written
    monkeypatch.setattr(torch, "save", real_save)
    assert train.main(_argv(root, out)) == 0
    a, b = _weights(baseline[0]), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_output_folder_deleted_during_the_run_is_one_line(root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "vanishing"
    step = tiny.DasslTinyLinear.forward_backward

    def forward_backward(self, batch):
        if self.epoch == 1 and self.batch_idx == 0:
            shutil.rmtree(out)
        return step(self, batch)

    monkeypatch.setattr(tiny.DasslTinyLinear, "forward_backward", forward_backward)
    assert train.main(_argv(root, out)) == 2
    assert _one_error(capsys) == (
        'error: the output folder "{}" no longer exists (deleted or unmounted during the run); its checkpoints went '
        "with it, so a rerun of the same command starts again".format(out))
    assert not out.exists()  # not made again without its log and earlier checkpoints


def test_an_output_folder_that_cannot_be_made_is_one_line(root, tmp_path, capsys):
    (tmp_path / "plain_file").write_text("")
    out = tmp_path / "plain_file" / "out"
    assert train.main(_argv(root, out)) == 2
    assert "a part of that path is a file, not a folder; choose another path" in _one_error(capsys)


def test_second_writer_stops_at_once_naming_the_first(root, tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.makedirs(out)
        (out / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                   "started": "today", "command": "train.py --other"}))
        assert train.main(_argv(root, out)) == 2
        err = capsys.readouterr().err
        assert "another run is writing to" in err and f"pid {holder.pid}" in err and "train.py --other" in err
        assert os.listdir(out) == ["run.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, replaced with a notice, and the run goes ahead
    assert train.main(_argv(root, out, "OPTIM.MAX_EPOCH", "1")) == 0
    assert f"Removing a stale lock \"{out / 'run.lock'}\" (pid {holder.pid}" in capsys.readouterr().out
    assert (out / "result.json").exists() and not (out / "run.lock").exists()


def test_lock_round_trip_and_pid_reuse(tmp_path):
    lock = RunLock(str(tmp_path / "o")).acquire()
    with pytest.raises(RunLockedError, match="another run is writing"):
        RunLock(str(tmp_path / "o")).acquire()
    record = json.loads((tmp_path / "o" / "run.lock").read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    # same pid, but a process that started at another time: the pid was reused, the lock is stale
    record["proc_start"] = (record["proc_start"] or 0) + 1
    (tmp_path / "o" / "run.lock").write_text(json.dumps(record))
    RunLock(str(tmp_path / "o")).acquire().release()
    lock.release()
    assert not (tmp_path / "o" / "run.lock").exists()


@pytest.mark.parametrize("flags,expected", [
    (("--trainer", "DasslTinyLinar"), "do you mean [DasslTinyLinear]"),
    (("DATASET.NAME", "DasslTinyColours"), "unknown dataset 'DasslTinyColours'"),
])
def test_bad_names_are_refused_before_anything_is_written_or_dumped(root, tmp_path, capsys, flags, expected):
    out = tmp_path / "never"
    argv = tiny.tiny_argv(root, out, *flags)
    assert train.main(argv) == 2
    captured = capsys.readouterr()
    assert expected in captured.err and "** Config **" not in captured.out
    assert not out.exists()


def test_a_folder_with_nothing_to_resume_starts_cleanly(root, tmp_path):
    out = tmp_path / "started"
    (out / "linear_probe").mkdir(parents=True)  # a model folder without a checkpoint pointer, and a log
    (out / "log.txt").write_text("Loading trainer: DasslTinyLinear\n")
    assert train.main(_argv(root, out, "OPTIM.MAX_EPOCH", "1")) == 0
    newest = max((f for f in os.listdir(out) if f.startswith("log.txt-")), key=lambda f: osp.getmtime(out / f))
    assert "No checkpoint found, train from scratch" in (out / newest).read_text()


def test_terminal_header_is_short_and_the_log_keeps_the_full_dump(root, tmp_path, capfd):
    out = tmp_path / "quiet"
    assert train.main(_argv(root, out, "OPTIM.MAX_EPOCH", "1")) == 0
    terminal = capfd.readouterr().out
    log = (out / "log.txt").read_text()
    assert "** Config **" in log and "** System info **" in log and "** Arguments **" in log
    assert "** Config **" not in terminal and "OPTIM:" not in terminal
    assert "DasslTinyLinear on DasslTinyColors" in terminal and f"log: {out / 'log.txt'}" in terminal
    assert "* accuracy:" in terminal  # the run itself is still shown
    argv = _argv(root, tmp_path / "loud", "OPTIM.MAX_EPOCH", "1")
    first_opt = argv.index("TRAIN.CHECKPOINT_FREQ")
    assert train.main(argv[:first_opt] + ["--print-config"] + argv[first_opt:]) == 0
    assert "** Config **" in capfd.readouterr().out


def test_train_py_imports_and_runs_on_a_dassl_without_the_project_extras(root, tmp_path, monkeypatch, capsys):
    """The real Dassl.pytorch has no dassl.engine.run_result nor RunLock. Hide them and import the compatibility
    module (trainers/compat.py, the one place that knows) afresh: the run falls back with a one-line notice, still
    refuses bad input with exit status 2 and trains. (The trainer here still runs on this project's engine, which
    writes result.json itself.)"""
    import importlib.util

    import dassl.utils
    import trainers.compat
    import trainers.runner as runner

    monkeypatch.delattr(dassl.utils, "RunLock")
    monkeypatch.setitem(sys.modules, "dassl.engine.run_result", None)  # its import fails, as on the real Dassl
    spec = importlib.util.spec_from_file_location("compat_on_real_dassl", trainers.compat.__file__)
    compat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compat)
    assert compat.write_run_result is None and compat.RunLock is None
    for name in ("MISSING", "RunLock", "write_run_result"):
        monkeypatch.setattr(runner, name, getattr(compat, name))
    assert train.main(["--trainer", "NoSuchTrainer"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Note: this Dassl has no result.json and no output-folder lock; running without."
    assert err[1].startswith("error: unknown trainer [NoSuchTrainer]")
    out = tmp_path / "real"
    assert train.main(_argv(root, out, "OPTIM.MAX_EPOCH", "1")) == 0
    assert "Finish training" in (out / "log.txt").read_text() and not (out / "run.lock").exists()


def test_protocol_script_says_what_it_resumes_and_names_the_newest_log(tmp_path):
    """scripts/protocol.sh with a stand-in for Python (no interpreter start-up): a folder without a checkpoint has
    nothing to resume; a failed attempt's message names that attempt's log, not the first one's."""
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\n'
                    'if [ "$1" = train.py ]; then\n'
                    '  while [ "$1" != --output-dir ]; do shift; done\n'
                    '  echo "attempt" > "$2/log.txt-2099-01-01-00-00-00"; exit "${FAKE_RC:-1}"\n'
                    'fi\n'
                    'exit 0\n')
    fake.chmod(0o755)
    run_dir = tmp_path / "out/base2new/train_base/eurosat/shots_16/X/c/seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text("the first attempt\n")
    env = dict(os.environ, PYTHON=str(fake), OUTPUT=str(tmp_path / "out"), TRAINER="X", CFG_B2N="c")
    cmd = ["bash", osp.join(repo, "scripts", "protocol.sh"), "base2new_train", "eurosat", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "saved no checkpoint: nothing to resume, starting it again" in proc.stdout
    assert f"see {run_dir}/log.txt-2099-01-01-00-00-00" in proc.stderr

    (run_dir / "m").mkdir()
    (run_dir / "m" / "checkpoint").write_text("model-last.pth.tar\n")
    proc = subprocess.run(cmd, env=dict(env, FAKE_RC="2"), capture_output=True, text=True, timeout=60)
    assert "Unfinished run found" in proc.stdout and "resuming from its last checkpoint" in proc.stdout
    assert "train.py refused the run" in proc.stderr and "see " not in proc.stderr
