"""A real one-node Slurm cluster in a temporary folder, for the sweep tests.

``SlurmCluster(folder).start()`` writes a munge key and a ``slurm.conf`` (this host as controller and only node,
with the machine's CPUs and memory, one default partition, every spool/state/pid/log path inside ``folder``,
free TCP ports), starts ``munged``, ``slurmctld`` and ``slurmd`` and waits until the node is idle. ``stop()``
ends the three daemons by the process ids in their pid files. Clients find the cluster through ``SLURM_CONF``
(``cluster.env``). No accounting daemon runs, so ``sacct`` fails: the sweep reads job states from ``squeue`` and
the runs' ``result.json`` files instead.

Needs Debian's ``slurm-wlm`` and ``munge`` packages (``apt-get install -y slurm-wlm munge``) and root (munged and
slurmd run as the current user). :func:`missing_reason` says why a cluster cannot start here, or ``None``.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")


def missing_reason():
    """Why no cluster can be started on this machine (``None`` when one can)."""
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "squeue"):
        if shutil.which(tool) is None:
            return "{} is not installed (apt-get install -y slurm-wlm munge)".format(tool)
    if os.geteuid() != 0:
        return "the one-node Slurm cluster runs slurmd, which needs root"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    def __init__(self, folder, partition="debug"):
        self.folder = Path(folder)
        self.partition = partition
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = self.folder / "slurm.conf"
        self.socket = self.folder / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def pid_file(self, daemon):
        return self.folder / "run" / "{}.pid".format(daemon)

    def log_file(self, daemon):
        return self.folder / "log" / "{}.log".format(daemon)

    def _write_files(self):
        for sub in ("munge", "run", "log", "state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder / "munge", 0o700)
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        lines = [
            "ClusterName=sweeptest",
            "SlurmctldHost={}".format(self.host),
            "SlurmctldPort={}".format(_free_port()),
            "SlurmdPort={}".format(_free_port()),
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "AuthInfo=socket={}".format(self.socket),
            "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",  # memory is not consumed: jobs without --mem share the node
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "JobRequeue=1",
            "MinJobAge=300",
            "SchedulerParameters=sched_interval=1",
            "StateSaveLocation={}".format(self.folder / "state"),
            "SlurmdSpoolDir={}".format(self.folder / "spool"),
            "SlurmctldPidFile={}".format(self.pid_file("slurmctld")),
            "SlurmdPidFile={}".format(self.pid_file("slurmd")),
            "SlurmctldLogFile={}".format(self.log_file("slurmctld")),
            "SlurmdLogFile={}".format(self.log_file("slurmd")),
            "NodeName={} CPUs={} RealMemory={} State=UNKNOWN".format(self.host, self.cpus, _memory_mb()),
            "PartitionName={} Nodes={} Default=YES MaxTime=INFINITE State=UP".format(self.partition, self.host),
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _run(self, *args):
        subprocess.run(list(args), env=self.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self, timeout=60):
        self._write_files()
        m = self.folder / "munge"
        self._run("munged", "--force", "--socket={}".format(self.socket), "--key-file={}".format(m / "munge.key"),
                  "--pid-file={}".format(self.pid_file("munged")), "--log-file={}".format(self.log_file("munged")),
                  "--seed-file={}".format(m / "munge.seed"))
        self._run("slurmctld", "-f", str(self.conf), "-i")  # -i: ignore any saved state (fresh cluster)
        self._run("slurmd", "-f", str(self.conf), "-N", self.host)
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("the Slurm node did not become idle in {} s; see {}".format(timeout, self.folder / "log"))

    def stop(self, timeout=20):
        for daemon in DAEMONS:
            pid_file = self.pid_file(daemon)
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)

    def squeue(self):
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.split("\n")
