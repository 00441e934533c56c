"""The installable project: pyproject.toml against the requirements files, the wheel's one folder, the commands'
import rule, and the constraints file.

Decision tested here (README "Installation"): the project keeps its import names (clip, dassl, datasets, ...),
which openai-clip, the real Dassl and Hugging Face's datasets use too. So the wheel installs every file under
``mpl_clip/`` and never over another distribution's files, and the commands put that folder first on sys.path.
"""
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines(name):
    """The requirement lines of a requirements file (no comments, no ``-r`` includes)."""
    lines = [ln.split("#")[0].strip() for ln in (REPO / name).read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("-")]


def project_name(requirement):
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", requirement)[0].lower())


def test_requirements_files_mirror_pyproject():
    project = PYPROJECT["project"]
    assert requirement_lines("requirements.txt") == project["dependencies"]
    extras = project["optional-dependencies"]
    own = [r for r in extras["dev"] if not r.startswith("mpl-clip[")]
    included = re.search(r"\[(.*)\]", extras["dev"][0]).group(1).split(",")  # mpl-clip[slurm,hf]
    pinned = {project_name(r) for r in own}
    # requirements-dev.txt: the dev extra's own lines, then what its included extras add
    assert requirement_lines("requirements-dev.txt") == own + [
        r for extra in included for r in extras[extra] if project_name(r) not in pinned]
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text()


def test_lower_bounds_and_no_caps_on_torch():
    deps = {re.split(r"[<>=!~\[ ]", d)[0].lower(): d for d in PYPROJECT["project"]["dependencies"]}
    assert deps["torch"] == "torch>=2.3"  # torch.amp.GradScaler(device) is new in 2.3
    assert deps["pyyaml"].startswith("PyYAML>=")  # train.py and tools/sweep/spec.py import yaml
    assert not any("<" in d for d in PYPROJECT["project"]["dependencies"])  # a newer torch is kept, not replaced
    assert "submitit" in str(PYPROJECT["project"]["optional-dependencies"]["slurm"])


def test_constraints_pin_what_the_tests_install():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[project_name(name)] = version
    for req in requirement_lines("requirements.txt") + requirement_lines("requirements-dev.txt"):
        assert project_name(req) in pins, f"constraints.txt does not pin {project_name(req)}"
    assert (REPO / ".ci/run").read_text().count("-c constraints.txt -r requirements-dev.txt") == 1


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    tests = readme[readme.index("\n## Tests\n"):]
    command = tests.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()
    assert command.count("&&") == 1 and "tests/suite.py" in command
    assert command in (REPO / ".ci/run").read_text().splitlines()
    assert f"{command}  # 2. the tests" in readme  # the quick start's second command


def wheel_files(tmp_path):
    """Build the wheel from a copy of the tracked files, offline (the installed setuptools)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = tmp_path / "src"
    for name in filter(None, files):
        path = REPO / name
        if path.is_file() or path.is_symlink():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), src / name) if path.is_symlink() else (src / name).write_bytes(path.read_bytes())
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


@pytest.mark.slow
def test_the_wheel_installs_one_folder_and_writes_over_no_other_package(tmp_path):
    pytest.importorskip("setuptools")
    names = wheel_files(tmp_path)
    tops = {n.split("/")[0] for n in names}
    assert tops == {"mpl_clip", "mpl_clip-0.1.0.dist-info"}  # no clip/, dassl/, datasets/ of its own
    for needed in ("mpl_clip/train.py", "mpl_clip/clip/bpe_simple_vocab_16e6.txt.gz", "mpl_clip/tools/commands.py",
                   "mpl_clip/pretrain/weights/tiny-digits.pt", "mpl_clip/configs/datasets/digits.yaml",
                   "mpl_clip/scripts/protocol.sh", "mpl_clip/scripts/mpl/base2new_train.sh",
                   "mpl_clip/tools/published/base2new.json", "mpl_clip/dassl/engine/trainer.py"):
        assert needed in names
    assert not any(n.startswith("mpl_clip/tests/") or n.startswith("mpl_clip/bench/") for n in names)


def run_python(code, cwd, path_first):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(path_first)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def foreign(tmp_path):
    """A folder with other distributions' clip, dassl and datasets (as openai-clip, Dassl, HF datasets install)."""
    for name in ("clip", "dassl", "datasets"):
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text(f"WHO = 'foreign {name}'\n")
    return tmp_path / "site"


def test_commands_import_the_projects_packages_before_others(foreign, tmp_path):
    """With foreign clip/dassl/datasets first on sys.path (installed elsewhere), a command of the project still
    imports its own; plain Python outside the project keeps importing the foreign ones."""
    code = f"""
        import sys
        sys.path.append({str(REPO)!r})              # the project reachable, but after the foreign packages
        import importlib
        commands = importlib.import_module("tools.commands")
        import clip as before
        print("before", getattr(before, "WHO", "project"))
        del sys.modules["clip"]
        commands.use_project_packages()
        import clip, dassl, datasets
        print("after", clip.__file__.startswith({str(REPO)!r}), dassl.__file__.startswith({str(REPO)!r}),
              datasets.__file__.startswith({str(REPO)!r}))
    """
    out = run_python(code, tmp_path, foreign)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["before", "foreign", "clip", "after", "True", "True", "True"]


def test_a_foreign_package_imported_first_stops_a_command_with_one_line(foreign, tmp_path):
    code = f"""
        import sys
        sys.path.append({str(REPO)!r})
        import clip                                  # another distribution's, imported by the caller first
        from tools import commands
        sys.argv = ["mpl-results", "--help"]
        commands.results()
    """
    out = run_python(code, tmp_path, foreign)
    assert out.returncode == 2
    assert out.stderr.startswith("error: the module 'clip' was already imported from") and \
        out.stderr.count("\n") == 1


def test_importing_the_methods_does_not_import_torchvision():
    """Every protocol script looks its method up (``python -m tools.method_defaults``) before train.py starts;
    torchvision (and the torch._dynamo it pulls) would add about a second to each of those lookups."""
    code = "import sys, trainers; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
