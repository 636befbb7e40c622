"""run/eval_knn.py --data / --train-data / --val-data, end to end: the script (a subprocess) evaluates
a checkpoint on another image folder than the one in its config."""
import json
import os
import subprocess
import sys

import pytest

from _eval_helpers import run_tool, tiny_checkpoint
from _train_helpers import ROOT, write_image_folder


def _eval_knn(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, os.path.join(ROOT, "run", "eval_knn.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained ViT-T/4 checkpoint whose config points at its own 2-class folder (4 + 4 images per
    split); vit_tiny is a registered model, so the script (another process) can rebuild it."""
    path, _ = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), hssl=False, extra=("model.arch=vit_tiny",))
    return path


def test_eval_knn_on_another_folder(tmp_path, checkpoint):
    path = checkpoint
    other = write_image_folder(str(tmp_path / "other"), n_per_class=3, classes=("p", "q", "r"), seed=1)
    small = write_image_folder(str(tmp_path / "small"), n_per_class=2, classes=("p", "q", "r"), seed=2)
    out = str(tmp_path / "knn.json")
    p = _eval_knn("--checkpoint", path, "--data", other, "--val-data", os.path.join(small, "val"),
                  "--k", "3", "--output", out)
    assert p.returncode == 0, p.stderr[-3000:]
    # --data gives train/ (9 images of 3 classes), --val-data replaces its val/ (6 images)
    assert "k-NN on 9 train / 6 val images, 192-d features" in p.stdout, p.stdout
    assert "k-NN (teacher base) T=0.07 k=3: top-1" in p.stdout
    res = json.load(open(out))["results"]["3"]
    # 6 val images: top-1 is a multiple of 1/6; 3 classes: the true class is always in the top 5
    assert abs(res["top1"] * 6 / 100 - round(res["top1"] * 6 / 100)) < 1e-6 and res["top5"] == 100.0


def test_eval_knn_missing_data_folder_is_one_line(tmp_path, checkpoint, capsys):
    path = checkpoint
    missing = str(tmp_path / "nowhere")
    p = _eval_knn("--checkpoint", path, "--data", missing)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--data {missing!r} is not a directory" in lines[0], p.stderr
    # a root without val/ (in process: the same code path, no second interpreter start)
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    eval_knn = run_tool("eval_knn")
    assert eval_knn.main(["--checkpoint", path, "--data", str(tmp_path / "only_train")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected sub-folders train/ and val/" in err[0] and "val' is missing" in err[0]


def test_checkpoint_without_teacher_is_evaluated_and_labelled_as_the_student(tmp_path, capsys):
    path, _ = tiny_checkpoint(tmp_path, method="mae", extra=("optim.betas=[0.9,0.95]",))
    out = str(tmp_path / "knn.json")
    assert run_tool("eval_knn").main(["--checkpoint", path, "--output", out]) in (0, None)
    assert "(student base)" in capsys.readouterr().out
    assert json.load(open(out))["which"] == "student"
