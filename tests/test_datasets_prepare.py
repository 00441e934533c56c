"""``python -m datasets.prepare`` end to end against a local HTTP server on 127.0.0.1 (no other network)."""
import os
import shutil
import zipfile

import pytest

import datasets  # noqa: F401
import datasets.download as dl
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from dassl.utils import UserError
from datasets.fixtures import make_fixture
from datasets.prepare import ensure_dataset, main, prepare
from http_server import FileServer


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_DELAY", 0.0)


@pytest.fixture(scope="module")
def eurosat_files(tmp_path_factory):
    """EuroSAT.zip (top folder 2750/, as the real one) and split_zhou_EuroSAT.json from a 3-class fixture."""
    src = tmp_path_factory.mktemp("src")
    make_fixture("eurosat", src, n_per_class=2, n_classes=3)
    archive = src / "EuroSAT.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for dirpath, _, names in os.walk(src / "eurosat" / "2750"):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                zf.write(path, os.path.relpath(path, src / "eurosat"))
    return {
        "EuroSAT.zip": archive.read_bytes(),
        "split_zhou_EuroSAT.json": (src / "eurosat" / "split_zhou_EuroSAT.json").read_bytes(),
    }


def test_download_extract_verify_then_noop(server, eurosat_files, tmp_path, capsys):
    server.files.update(eurosat_files)
    summary = prepare("eurosat", tmp_path, mirror=server.url, quiet=True)
    assert summary["images"] == 18 and summary["classes"] == 3
    assert sorted(name for name, _ in server.log) == ["EuroSAT.zip", "split_zhou_EuroSAT.json"]
    assert os.path.isfile(tmp_path / "eurosat" / ".prepare.json")
    assert not os.listdir(tmp_path / ".prepare" / "downloads")  # archive removed after extraction

    cfg = get_cfg_default()
    cfg.VERBOSE = False
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(tmp_path), "EuroSAT"
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    assert len(build_dataset(cfg).test) == 6

    server.log.clear()
    capsys.readouterr()
    assert main(["eurosat", "--root", str(tmp_path), "--mirror", server.url]) == 0
    assert server.log == [] and "nothing to do" in capsys.readouterr().out
    assert main(["eurosat", "--root", str(tmp_path), "--check"]) == 0


def test_truncated_download_resumes(server, eurosat_files, tmp_path):
    server.files.update(eurosat_files)
    size = len(eurosat_files["EuroSAT.zip"])
    server.cut["EuroSAT.zip"] = size // 3
    prepare("eurosat", tmp_path, mirror=server.url, quiet=True)
    requests = [r for name, r in server.log if name == "EuroSAT.zip"]
    assert requests == [None, f"bytes={size // 3}-"]


@pytest.mark.parametrize("honour_range", [True, False], ids=["resumed", "server_ignores_range"])
def test_part_file_from_an_earlier_run(server, eurosat_files, tmp_path, honour_range):
    """A leftover .part file is resumed with a Range request; when the server answers with the whole file (200)
    instead, the download starts over rather than appending to the partial file."""
    server.files.update(eurosat_files)
    server.honour_range = honour_range
    data = eurosat_files["EuroSAT.zip"]
    part = tmp_path / ".prepare" / "downloads" / "EuroSAT.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    dl.http_download(f"{server.url}/EuroSAT.zip", str(part)[: -len(".part")], quiet=True)
    assert server.log == [("EuroSAT.zip", "bytes=1000-")]
    assert (tmp_path / ".prepare" / "downloads" / "EuroSAT.zip").read_bytes() == data and not part.exists()


def test_missing_and_unreadable_images_are_named(server, eurosat_files, tmp_path, capsys):
    server.files.update(eurosat_files)
    prepare("eurosat", tmp_path, mirror=server.url, quiet=True)
    image_dir = tmp_path / "eurosat" / "2750" / "Forest"
    gone, broken = sorted(os.listdir(image_dir))[:2]
    os.remove(image_dir / gone)
    (image_dir / broken).write_bytes(b"not a jpeg")
    capsys.readouterr()
    assert main(["eurosat", "--root", str(tmp_path), "--verify-only"]) == 2
    err = capsys.readouterr().err
    assert "1 of 18 images are missing" in err and str(image_dir / gone) in err
    assert "1 of 18 images do not open" in err and str(image_dir / broken) in err


def test_local_archives_need_no_network(eurosat_files, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    for name, data in eurosat_files.items():
        (folder / name).write_bytes(data)
    prepare("eurosat", tmp_path / "data", archives=[str(folder)], quiet=True)
    assert (folder / "EuroSAT.zip").exists()  # the user's own file is left alone
    assert ensure_dataset("eurosat", tmp_path / "data") == str(tmp_path / "data" / "eurosat")


def test_offline_check_says_what_to_get_and_where(tmp_path, capsys):
    with pytest.raises(UserError) as err:
        ensure_dataset("eurosat", tmp_path)
    msg = str(err.value)
    assert "http://madm.dfki.de/files/sentinel/EuroSAT.zip" in msg and str(tmp_path / "eurosat" / "2750") in msg
    assert "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o" in msg
    assert main(["eurosat", "--root", str(tmp_path), "--check"]) == 2
    assert "error: EuroSAT is missing" in capsys.readouterr().err


def test_dead_link_fails_at_once_with_the_way_around(server, tmp_path):
    with pytest.raises(UserError) as err:
        prepare("eurosat", tmp_path, mirror=server.url, quiet=True)
    assert "HTTP 404" in str(err.value) and "--archive" in str(err.value)
    assert len(server.log) == 1  # no retries on a 404


def test_imagenet_prints_what_to_place_where(server, tmp_path):
    server.files["classnames.txt"] = b"n01440764 tench\n"
    with pytest.raises(UserError) as err:
        prepare("imagenet", tmp_path, mirror=server.url, quiet=True)
    msg = str(err.value)
    assert f"{tmp_path}/imagenet/images/train/<wnid>/*.JPEG" in msg and "image-net.org" in msg
    assert (tmp_path / "imagenet" / "classnames.txt").read_bytes() == b"n01440764 tench\n"


def test_imagenet_fixture_verifies(tmp_path):
    make_fixture("imagenet", tmp_path, n_per_class=1, n_classes=4)
    assert prepare("imagenet", tmp_path, quiet=True)["images"] == 8


def test_variant_gets_a_copy_of_imagenet_classnames(tmp_path):
    make_fixture("imagenet_a", tmp_path, n_per_class=1, n_classes=3)
    (tmp_path / "imagenet").mkdir()
    shutil.move(tmp_path / "imagenet-adversarial" / "classnames.txt", tmp_path / "imagenet" / "classnames.txt")
    assert prepare("imagenet_a", tmp_path, quiet=True)["classes"] == 3
    assert (tmp_path / "imagenet-adversarial" / "classnames.txt").is_file()


def test_caltech256_split_is_drawn_by_prepare(tmp_path, capsys):
    make_fixture("caltech256", tmp_path, n_per_class=2, n_classes=3)
    assert main(["caltech256", "--root", str(tmp_path), "--check"]) == 0  # images are enough: the split is drawn
    assert main(["caltech256", "--root", str(tmp_path), "--verify-only"]) == 0
    assert (tmp_path / "caltech-256" / "split_huang_Caltech256.json").is_file()
    assert "seed 1" in capsys.readouterr().out


def test_archive_with_an_unexpected_name_is_refused(tmp_path, capsys):
    wrong = tmp_path / "eurosat_rgb_download.zip"
    wrong.write_bytes(b"PK")
    assert main(["eurosat", "--root", str(tmp_path), "--archive", str(wrong)]) == 2
    assert "EuroSAT.zip" in capsys.readouterr().err


def test_fixture_command_line(tmp_path, capsys):
    from datasets.fixtures import main as fixtures_main

    assert fixtures_main(["dtd", "--root", str(tmp_path), "--n-classes", "2", "--n-per-class", "1"]) == 0
    assert "dtd: 2 classes" in capsys.readouterr().out
    assert prepare("dtd", tmp_path, quiet=True)["images"] == 6  # the split file is there: nothing to download


def test_damaged_download_is_reported_and_fetched_again(server, eurosat_files, tmp_path):
    server.files.update(eurosat_files)
    server.files["EuroSAT.zip"] = b"<html>quota exceeded</html>"
    with pytest.raises(UserError, match="neither a zip nor a tar"):
        prepare("eurosat", tmp_path, mirror=server.url, quiet=True)
    assert not (tmp_path / ".prepare" / "downloads" / "EuroSAT.zip").exists()
    server.files["EuroSAT.zip"] = eurosat_files["EuroSAT.zip"]
    assert prepare("eurosat", tmp_path, mirror=server.url, quiet=True)["images"] == 18
