"""Entry points and layering: one safe loader for every user file, one-line user errors (exit code 2),
overrides anywhere on the command line, quiet Jittor, models/ below jhssl/, the packaged timm lists."""
import glob
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import jhssl  # noqa: F401  (Jittor's environment first)
from jhssl import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yaml")


def _one_error_line(err: str, prog: str) -> str:
    """The stderr of a user error: no traceback, one line '<prog>: error: ...' at the end."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"{prog}: error: "), err[-3000:]
    return lines[-1]


# ------------------------------------------------------------------------------------------------
# one loading policy: a pickle that would run code is refused everywhere, naming --trust-pickle


class _CreatesMarker:
    """Unpickling this calls open(marker, 'w'): code execution, observable as a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _empty_config(tmp_path):
    """A config file with the defaults only (the tests add the tiny model and data as overrides)."""
    path = tmp_path / "defaults.yaml"
    path.write_text("{}\n")
    return str(path)


@pytest.fixture
def evil(tmp_path):
    marker = str(tmp_path / "MARKER")
    path = str(tmp_path / "evil.pkl")
    payload = {"student": {"x": np.zeros(2, np.float32)}, "teacher": _CreatesMarker(marker),
               "config": {"model": {"arch": "vit_tiny"}}}
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    return path, marker


def _refused(capsys, marker, prog):
    line = _one_error_line(capsys.readouterr().err, prog)
    assert "--trust-pickle" in line and "refusing to unpickle" in line
    assert not os.path.exists(marker), "the pickle's code ran"


def test_train_resume_refuses_a_code_pickle(evil, tmp_path, capsys):
    from _train_helpers import register_tiny_vit, tiny_overrides, write_image_folder
    from run import train as entry
    register_tiny_vit()
    data = write_image_folder(str(tmp_path / "data"))
    path, marker = evil
    args = ["--config", _empty_config(tmp_path), "--resume", path, "--no-progress"] + \
        tiny_overrides(str(tmp_path / "out"), data)
    assert entry.main(args) == 2
    _refused(capsys, marker, "train")


def test_eval_knn_refuses_a_code_pickle(evil, capsys):
    from run import eval_knn as entry
    path, marker = evil
    assert entry.main(["--checkpoint", path]) == 2
    _refused(capsys, marker, "eval_knn")


def test_analyze_refuses_a_code_pickle(evil, capsys):
    from run import analyze as entry
    path, marker = evil
    assert entry.main(["--baseline-ckpt", path, "--hssl-ckpt", path]) == 2
    _refused(capsys, marker, "analyze")


def test_export_refuses_a_code_pickle(evil, tmp_path, capsys):
    from run import export as entry
    path, marker = evil
    out = str(tmp_path / "w.safetensors")
    assert entry.main(["--checkpoint", path, "--out", out]) == 2
    _refused(capsys, marker, "export")
    assert not os.path.exists(out)


def test_convert_refuses_a_code_pickle(evil, tmp_path, capsys):
    from run import convert as entry
    path, marker = evil
    assert entry.main(["--src", path, "--arch", "vit_tiny", "--out", str(tmp_path / "w.pkl")]) == 2
    _refused(capsys, marker, "convert")


def test_zoo_verify_refuses_a_code_pickle(evil, tmp_path, capsys, monkeypatch):
    from run import zoo as entry
    path, marker = evil
    registry = tmp_path / "zoo.yaml"
    registry.write_text(f"entries:\n- {{name: evil, arch: vit_tiny, file: evil.pkl, url: 'file://{path}', "
                        "sha256: null, source: test, licence: none}\n")
    monkeypatch.setenv("JHSSL_ZOO", str(registry))
    assert entry.main(["verify", "evil"]) == 2
    _refused(capsys, marker, "zoo")


@pytest.mark.parametrize("tool,extra", [("eval_linear", []), ("finetune", []),
                                        ("visualize", ["--images", os.path.join(ROOT, "README.md")])])
def test_evaluation_tools_refuse_a_code_pickle(evil, capsys, tool, extra):
    import importlib
    entry = importlib.import_module(f"run.{tool}")
    path, marker = evil
    assert entry.main(["--checkpoint", path, *extra]) == 2
    _refused(capsys, marker, tool)


def test_jhssl_checkpoints_load_without_trust(tmp_path):
    """What the trainer writes (numpy arrays, AdamW state, RNG states, config, metrics) passes the allow-list."""
    import jittor as jt
    from _train_helpers import tiny_config
    from jhssl import checkpoint as ck
    from jhssl.methods import build_model
    from jhssl.optim import AdamW, param_groups
    from jhssl.train import _checkpoint_state
    cfg = tiny_config(str(tmp_path / "out"))
    method = build_model(cfg)
    opt = AdamW(param_groups(method.student), lr=0.0)
    jt.set_seed(5)
    state = _checkpoint_state(method, opt, cfg, 1, 7, {"knn": {20: {"top1": 50.0, "top5": 90.0}}})
    path = ck.save_rolling(state, str(tmp_path / "out"), 7, keep_last=1)
    back = ck.load_checkpoint(path)  # trusted=False
    assert back["iteration"] == 7 and back["config"] == cfg.to_dict()
    assert back["metrics"]["knn"][20]["top1"] == 50.0
    for k, v in state["student"].items():
        np.testing.assert_array_equal(back["student"][k], v)
    np.testing.assert_array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    assert back["rng"]["python"] == state["rng"]["python"]
    opt.load_state_dict(back["optimizer"])  # the optimizer restores from what the loader returns


# ------------------------------------------------------------------------------------------------
# user errors: one line, exit code 2, before any compute


def _train(args, tmp_path, capsys):
    from run import train as entry
    rc = entry.main(["--config", _empty_config(tmp_path), "--no-progress"] + args)
    return rc, capsys.readouterr().err


def _tiny(tmp_path, data=None, extra=()):
    from _train_helpers import register_tiny_vit, tiny_overrides, write_image_folder
    register_tiny_vit()
    data = data or write_image_folder(str(tmp_path / "data"))
    return tiny_overrides(str(tmp_path / "out"), data) + list(extra)


def test_unknown_arch_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "run", "train.py"), "--config", DEMO,
                        "model.arch=vit_huge", f"output_dir={tmp_path / 'out'}", "--no-resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    line = _one_error_line(r.stderr, "train")
    assert "unknown model 'vit_huge'" in line and "vit_small" in line
    assert not os.path.exists(tmp_path / "out" / "log.jsonl")


def test_truncated_checkpoint_on_resume_is_one_line(tmp_path, capsys):
    from jhssl.checkpoint import atomic_save
    path = str(tmp_path / "ckpt.pkl")
    atomic_save({"student": {"w": np.ones((64, 64), np.float32)}, "iteration": 3}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    rc, err = _train(["--resume", path] + _tiny(tmp_path), tmp_path, capsys)
    assert rc == 2
    assert "truncated or corrupted" in _one_error_line(err, "train")


def test_folder_with_fewer_images_than_the_batch_is_one_line(tmp_path, capsys):
    from _train_helpers import write_image_folder
    data = write_image_folder(str(tmp_path / "data"), n_per_class=1)  # 2 images, batch 4
    rc, err = _train(_tiny(tmp_path, data), tmp_path, capsys)
    assert rc == 2
    line = _one_error_line(err, "train")
    assert "has 2 images" in line and "batch_size=4" in line


def test_knn_k_larger_than_the_labelled_set_stops_before_training(tmp_path, capsys):
    rc, err = _train(_tiny(tmp_path, extra=["eval.knn_k=[20]"]), tmp_path, capsys)  # 8 labelled images
    assert rc == 2
    line = _one_error_line(err, "train")
    assert "k=20" in line and "8 labelled" in line
    assert not glob.glob(str(tmp_path / "out" / "checkpoint_*.pkl"))
    assert not os.path.exists(tmp_path / "out" / "log.jsonl") or "step" not in open(tmp_path / "out" / "log.jsonl").read()


def test_an_option_the_model_does_not_take_is_one_line(tmp_path, capsys):
    # The trainer passes patch_size (a ViT option) to every base; ResNet-50 has no patches.
    rc, err = _train(_tiny(tmp_path, extra=["model.arch=resnet50"]), tmp_path, capsys)
    assert rc == 2
    line = _one_error_line(err, "train")
    assert "resnet50" in line and "patch_size" in line


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        cli.run(main, [], prog="x")


def test_overrides_anywhere_on_the_command_line():
    from run import train as entry
    args = entry.parse_args(["--config", DEMO, "epochs=1", "--no-resume", "output_dir=/tmp/y", "--max-iters", "2",
                             "hssl.depth=2"])
    assert args.overrides == ["epochs=1", "output_dir=/tmp/y", "hssl.depth=2"]
    assert args.no_resume and args.max_iters == 2


# ------------------------------------------------------------------------------------------------
# environment and layering


@pytest.mark.parametrize("verbose", [False, True])
def test_jittor_info_lines_only_when_verbose(verbose):
    env = dict(os.environ)
    env.pop("log_silent", None)
    env["JHSSL_VERBOSE"] = "1" if verbose else "0"
    r = subprocess.run([sys.executable, "-c", "import jhssl, jittor; print('imported')"], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-2000:]
    info = re.findall(r"\[i \d{4} ", r.stdout + r.stderr)
    assert bool(info) == verbose


def test_interpreter_path_is_spelled_one_way(tmp_path):
    """Jittor keys its kernel cache on the interpreter's path: ``python`` and ``python3`` (links to one
    binary) must give the same string, or each recompiles the other's kernels (141 for the demo)."""
    from models.env import stable_executable
    real = tmp_path / "python3.11"
    real.write_text("")
    for name in ("python", "python3"):
        (tmp_path / name).symlink_to(real.name)
        assert stable_executable(str(tmp_path / name), (3, 11)) == str(real)
    other = tmp_path / "python3.12"  # another binary keeps its own name
    other.write_text("")
    assert stable_executable(str(other), (3, 11)) == str(other)
    assert stable_executable(str(tmp_path / "python"), (3, 12)) == str(tmp_path / "python")  # no python3.12 link
    # The real interpreters of this machine: every spelling reaches Jittor as the same path.
    folder = os.path.dirname(sys.executable)
    names = [n for n in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}")
             if os.path.exists(os.path.join(folder, n))
             and os.path.samefile(os.path.join(folder, n), sys.executable)]
    if len(names) < 2:
        pytest.skip(f"only one spelling of this interpreter in {folder}: {names}")
    seen = set()
    for name in names:
        r = subprocess.run([os.path.join(folder, name), "-c", "import models, jittor; print(jittor.flags.python_path)"],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        seen.add(r.stdout.strip().splitlines()[-1])
    assert len(seen) == 1, (names, seen)


def test_models_import_nothing_from_jhssl():
    code = ("import sys, models\n"
            "m = models.create_model('vit_tiny', img_size=32, patch_size=8)\n"
            "h = models.build_aux_head('convnext', m.num_features, depth=1)\n"
            "print(sorted(n for n in sys.modules if n == 'jhssl' or n.startswith('jhssl.')))\n"
            "try:\n"
            "    models.create_model('vit_tiny', pretrained='x')\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded, err = r.stdout.strip().splitlines()[-2:]
    assert loaded == "[]"  # in particular not jhssl.zoo, jhssl.convert, jhssl.train
    assert "import jhssl.zoo" in err and "create_pretrained" in err
    # ... and no source file under models/ names jhssl in an import.
    for path in glob.glob(os.path.join(ROOT, "models", "**", "*.py"), recursive=True):
        src = open(path).read()
        assert not re.search(r"^\s*(from|import)\s+jhssl", src, re.M), path


def test_config_parsing_does_not_import_jittor():
    r = subprocess.run([sys.executable, "-c", "import sys, jhssl.config as c; c.load_config(None, []); "
                        "print('jittor' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_zoo_registers_the_pretrained_loader(tmp_path):
    import models
    from jhssl import zoo, weights_io
    from jhssl.checkpoint import to_numpy_state
    src = models.create_model("vit_tiny", img_size=32, patch_size=8)
    path = str(tmp_path / "w.safetensors")
    weights_io.write_weights(to_numpy_state(src), path)
    for m in (models.create_model("vit_tiny", pretrained=path, img_size=32, patch_size=8),
              zoo.create_pretrained("vit_tiny", path, img_size=32, patch_size=8)):
        np.testing.assert_array_equal(m.state_dict()["pos_embed"].numpy(), src.state_dict()["pos_embed"].numpy())


def test_timm_reference_lists_are_package_data():
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python >= 3.11) reads pyproject.toml")
    from jhssl import timm_reference
    names = timm_reference.available()
    assert {"vit_small_patch16_224", "swin_tiny_patch4_window7_224", "resnet50", "pvt_v2_b2"} <= set(names)
    assert timm_reference.reference_dir().startswith(os.path.join(ROOT, "jhssl"))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    shipped = glob.glob(os.path.join(ROOT, "jhssl", data["jhssl"][1]))
    assert len(shipped) == len(names)
    kernels = data["models.layers.kernels"]
    assert all(glob.glob(os.path.join(ROOT, "models", "layers", "kernels", k)) for k in kernels)
    assert not re.search(r"/work/|shared/reference", open(os.path.join(ROOT, "jhssl", "convert.py")).read())
