"""tools/gpu_pack.py and tools/gpu_designs.py: the pack restores what crackseg trains on (names, sources, split,
masks bit for bit) within its budget, and the device's plan runs end to end at toy sizes on CPU, and resumes."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from crackseg.data import find_pairs, split_pairs
from crackseg.io.images import read_image, read_mask
from crackseg.synthetic import write_synthetic_dataset

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import gpu_designs  # noqa: E402  (scripts beside the package, not in it)
import gpu_pack  # noqa: E402

MIB = 2**20


def make_data(root: Path) -> Path:
    """Three sources in the shared data's layout: plain names, crops grouped by photo (<photo>_<x>_<y>), and JPEG
    masks."""
    write_synthetic_dataset(root / "plain", 6, size=(64, 96), seed=0, n_empty=1)
    for photo in range(3):
        write_synthetic_dataset(root / "crops", 3, size=(96, 64), seed=10 + 3 * photo, prefix=f"P{photo}_10")
    write_synthetic_dataset(root / "jpegmasks", 4, size=(64, 64), seed=30, mask_ext=".jpg")
    return root


def described(root: Path) -> list[tuple]:
    pairs = find_pairs(root)
    return [(str(p.image.relative_to(root)), str(p.mask.relative_to(root)), p.source, p.group) for p in pairs]


def validation(root: Path) -> list[str]:
    return sorted(str(p.image.relative_to(root)) for p in split_pairs(find_pairs(root))[1])


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_pack_restores_names_sources_split_and_exact_masks(tmp_path):
    data = make_data(tmp_path / "data")
    manifest = gpu_pack.pack(data, tmp_path / "pack", 64 * MIB, reserve=0, wheels=False, say=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == ["data.zip", "manifest.json"]
    gpu_pack.unpack(tmp_path / "pack", tmp_path / "unpacked", workers=2)
    unpacked = tmp_path / "unpacked"

    assert files_under(unpacked) == files_under(data)
    assert described(unpacked) == described(data)
    assert validation(unpacked) == validation(data) == manifest["split"]["val"]
    assert {v.split("/")[0] for v in validation(data)} == {"plain", "crops", "jpegmasks"}
    gpu_pack.check_split(manifest, unpacked)
    for image, mask, _, _ in described(data):
        np.testing.assert_array_equal(read_mask(unpacked / mask), read_mask(data / mask))
        original, restored = read_image(data / image), read_image(unpacked / image)
        assert restored.shape == original.shape
        assert np.abs(restored.astype(int) - original).mean() < 6


def test_pack_meets_its_budget_with_a_lower_quality(tmp_path):
    data = make_data(tmp_path / "data")
    roomy = gpu_pack.pack(data, tmp_path / "roomy", 64 * MIB, reserve=0, wheels=False, say=lambda _: None)
    fixed = gpu_pack.folder_bytes(tmp_path / "roomy") - roomy["bytes"]["photos"]
    budget = fixed + roomy["bytes"]["photos"] // 2 + 8192
    tight = gpu_pack.pack(data, tmp_path / "tight", budget, reserve=0, wheels=False, say=lambda _: None)
    assert tight["quality"] < roomy["quality"]
    assert gpu_pack.folder_bytes(tmp_path / "tight") <= budget


@pytest.mark.parametrize("room", ["none", "masks"])
def test_pack_refuses_a_budget_it_cannot_meet_in_one_line(tmp_path, capsys, room):
    """No room even for the masks; or room for the masks, not for the photos at the lowest quality."""
    data = make_data(tmp_path / "data")
    roomy = gpu_pack.pack(data, tmp_path / "roomy", 64 * MIB, reserve=0, wheels=False, say=lambda _: None)
    fixed = gpu_pack.folder_bytes(tmp_path / "roomy") - roomy["bytes"]["photos"] + 4096  # + the pack's own slack
    budget = 1000 if room == "none" else fixed + 512
    argv = ["--data", str(data), "--out", str(tmp_path / "pack"), "--budget-mib", str(budget / MIB)]
    assert gpu_pack.main([*argv, "--reserve-mib", "0", "--no-wheels"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --budget-mib: ") and error.count("\n") == 1
    assert ("photos need" in error) == (room == "masks")
    assert not (tmp_path / "pack").exists()  # nothing half made


def test_pack_of_a_folder_without_pairs_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert gpu_pack.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "pack"), "--budget-mib", "9"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no image/mask pairs" in error and error.count("\n") == 1


def test_budget_counts_what_the_device_tool_sends(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "tracked.txt").write_bytes(b"x" * 100)
    subprocess.run(["git", "add", "tracked.txt"], cwd=repo, check=True)
    (repo / "untracked.txt").write_bytes(b"y" * 50)
    (repo / ".gpu").mkdir()
    (repo / ".gpu" / "big.bin").write_bytes(b"z" * 1000)
    with pytest.raises(gpu_pack.PackError, match="info/exclude"):
        gpu_pack.default_budget(repo / ".gpu")  # not ignored: it would travel twice
    (repo / ".git" / "info" / "exclude").write_text("/.gpu/\n")
    assert gpu_pack.travelling_bytes(repo) == 150
    assert gpu_pack.default_budget(repo / ".gpu") == 64 * MIB - 150 - gpu_pack.MARGIN
    assert gpu_pack.check_travel(repo / ".gpu")[0] == 1150


def test_the_documented_call_fits_the_device_tool():
    doc = gpu_designs.__doc__
    command = re.search(r"command:\s+(.+)", doc).group(1)
    carry = json.loads(re.search(r"carry:\s+(\[.*\])", doc).group(1))
    assert len(command) < 2000 and carry == [".gpu"] and "--pack .gpu" in command
    assert re.search(r"timeout_s:\s+(\d+)", doc).group(1) == "600"
    plan = gpu_designs.Plan(pack=Path(".gpu"), out=Path("out"))
    assert plan.minutes + 0.5 < 10  # ends inside the tool's limit per command, with room for the start


def test_the_default_runs_are_the_narrow_decoders_on_labels_alone():
    plan = gpu_designs.Plan(pack=Path(".gpu"), out=Path("out"))
    decoders = []
    for design in (gpu_designs.DESIGNS[name] for name in plan.runs):
        args = list(design.args)
        decoders.append(json.loads(args[args.index("--arch-kwargs") + 1])["decoder_channels"])
        assert not design.distilled  # so no call spends its minutes on the teacher's maps
    assert decoders == [[64, 32, 16, 8, 4], [48, 24, 12, 8, 4], [32, 16, 8, 8, 4]]


def test_train_commands_distil_only_where_asked_and_resume_carried_states(tmp_path):
    plan = gpu_designs.Plan(pack=tmp_path / "pack", out=tmp_path / "out", work=tmp_path / "work", workers=3)
    data, maps = tmp_path / "data", tmp_path / "maps"
    distilled, labels = gpu_designs.DESIGNS["distilled"], gpu_designs.DESIGNS["labels"]
    run_dir = plan.work / "runs" / "labels"
    command = gpu_designs.train_command(plan, distilled, data, maps, run_dir, 6.25, resume=False)
    assert command[command.index("--teacher-maps") + 1] == str(maps) and command[-1] == "--overwrite"
    for flag, value in [("--size", "384"), ("--batch-size", "32"), ("--max-train-minutes", "6.25"), ("--workers", "3")]:
        assert command[command.index(flag) + 1] == value
    assert "--teacher-maps" not in gpu_designs.train_command(plan, labels, data, maps, run_dir, 6, resume=False)

    assert not gpu_designs.restore_run(plan, run_dir)
    (plan.pack / "resume").mkdir(parents=True)
    state = gpu_designs.tar_bytes({"last.pt": b"state", "history.csv": b"epoch\n1\n"})
    (plan.pack / "resume" / "labels.tar").write_bytes(state)
    assert gpu_designs.restore_run(plan, run_dir)
    assert (run_dir / "last.pt").read_bytes() == b"state"
    assert gpu_designs.train_command(plan, labels, data, maps, run_dir, 6, resume=True)[-1] == "--resume"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_preflight_stops_at_once_without_a_gpu_or_a_decodable_photo(tmp_path):
    data = make_data(tmp_path / "data")
    gpu_pack.pack(data, tmp_path / "pack", 64 * MIB, reserve=0, wheels=False, say=lambda _: None)
    plan = gpu_designs.Plan(pack=tmp_path / "pack", out=tmp_path / "out", install=False)
    lines = []
    assert not gpu_designs.preflight(plan, lines.append)
    assert lines == ["error: no CUDA device here: use --smoke for a CPU check"]
    with pytest.raises(gpu_pack.PackError, match="--codec jpeg"):
        gpu_pack.decode(b"not a photo")


def run_smoke(work: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TOOLS / "gpu_designs.py"), "--smoke", "--work", str(work), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_smoke_plan_teaches_trains_both_students_and_resumes(tmp_path):
    work = tmp_path / "work"
    first = run_smoke(work, "--runs", "distilled", "labels")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = work / "out"
    returned = sorted(p.name for p in out.iterdir())
    assert returned == ["distilled.tar", "labels.tar", "log.txt", "summary.json"]
    assert all(p.stat().st_size <= 16 * MIB for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert {name: len(run["history"]) for name, run in summary["runs"].items()} == {"distilled": 1, "labels": 1}
    assert "--teacher-maps" in summary["runs"]["distilled"]["command"]
    assert len(list((work / "teacher-maps").rglob("*.png"))) == 12  # every pair, over two teacher processes
    with tarfile.open(out / "labels.tar") as archive:
        assert {"history.csv", "best/model.safetensors", "best/config.json", "last.pt"} <= set(archive.getnames())
        state = torch.load(io.BytesIO(archive.extractfile("last.pt").read()), weights_only=True)
    assert state["optimizer"]["state"] == {} and state["epoch"] == 1
    assert {v.dtype for v in state["model"].values() if v.is_floating_point()} == {torch.float16}

    # The next call, on a fresh machine: only what --take-back put into the pack carries the runs over.
    assert gpu_pack.main(["--take-back", str(out), "--out", str(work / "pack"), "--keep", str(tmp_path / "kept")]) == 0
    assert sorted(p.name for p in (work / "pack" / "resume").iterdir()) == ["distilled.tar", "labels.tar"]
    shutil.rmtree(work / "runs")
    shutil.rmtree(out)
    second = run_smoke(work, "--runs", "labels", "--epochs", "2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["labels"]["resumed"] and len(summary["runs"]["labels"]["history"]) == 2
