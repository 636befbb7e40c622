"""Config: schema defaults, dotted overrides, type/unknown-key errors, _base_ inheritance, dump."""
import os

import pytest
import yaml

from jhssl.config import (SCHEMA, Config, ConfigError, config_from_dict, default_config, dump_yaml,
                          load_config)


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_defaults_hold_shared_names_and_paper_head():
    cfg = default_config()
    for k in ("output_dir", "epochs", "seed", "batch_size"):
        assert k in cfg
    assert "path" in cfg.data and "subset" in cfg.data
    # paper: ConvNext head, depth 3, no shortcut in the first block; iBOT ViT-S/16 App. B numbers
    assert cfg.hssl.heads == ["convnext"] and cfg.hssl.depth == 3 and cfg.hssl.first_shortcut is False
    assert cfg.optim.lr == 5e-4 and cfg.batch_size == 256 and cfg.optim.clip_grad == 3.0
    assert cfg.eval.knn_k == [20] and cfg.eval.knn_t == 0.07
    assert isinstance(cfg, Config) and cfg.optim.lr == cfg["optim"]["lr"]


def test_overrides_are_parsed_with_yaml_and_typed():
    cfg = load_config(None, ["optim.lr=1e-3", "hssl.heads=[convnext,resmlp]", "epochs=7",
                             "data.global_crops_scale=[0.3,1]", "data.path=/tmp/x", "amp=true"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.hssl.heads == ["convnext", "resmlp"]
    assert cfg.epochs == 7 and cfg.amp is True and cfg.data.path == "/tmp/x"
    assert cfg.data.global_crops_scale == [0.3, 1.0] and all(isinstance(x, float) for x in cfg.data.global_crops_scale)
    assert load_config(None, ["hssl=null"]).hssl is None
    # a single name for a list of names
    assert load_config(None, ["hssl.heads=swin"]).hssl.heads == ["swin"]


def test_unknown_keys_name_the_dotted_key_and_the_allowed_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.lrr=1e-3"])
    assert "'optim.lrr'" in str(e.value) and "momentum_teacher" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["nosuch.key=1"])
    assert "nosuch" in str(e.value) and "optim" in str(e.value)
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"pth": "/x"}})
    assert "'data.pth'" in str(e.value) and "subset" in str(e.value)


@pytest.mark.parametrize("override, key, expected", [
    ("epochs=abc", "epochs", "int"),
    ("epochs=1.5", "epochs", "int"),
    ("amp=1", "amp", "bool"),
    ("optim.lr=[1]", "optim.lr", "float"),
    ("data.subset=x", "data.subset", "float"),
    ("hssl.heads=[convnext,foo]", "hssl.heads", "convnext"),
    ("method=simclr", "method", "mae"),
    ("data.subset=0", "data.subset", "(0, 1]"),
    ("optim=3", "optim", "mapping"),
])
def test_wrong_types_and_values_are_errors(override, key, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert f"'{key}'" in msg and expected in msg


def test_cross_checks():
    with pytest.raises(ConfigError, match="multiple of"):
        load_config(None, ["data.global_crop_size=30", "model.patch_size=4"])
    with pytest.raises(ConfigError, match="pred_ratio"):
        load_config(None, ["mask.pred_ratio=0.1", "mask.pred_ratio_var=0.2"])
    with pytest.raises(ConfigError, match="same length"):
        load_config(None, ["mask.pred_ratio=[0.1,0.3]", "mask.pred_ratio_var=[0]"])


def test_base_inheritance_merges_and_resolves_relative_paths(tmp_path):
    _write(tmp_path / "base" / "root.yaml", {"epochs": 3, "optim": {"lr": 0.1, "clip_grad": 0.3},
                                              "hssl": {"heads": ["resmlp"], "depth": 2}})
    _write(tmp_path / "base" / "mid.yaml", "_base_: root.yaml\noptim:\n  lr: 1e-3\n")
    child = _write(tmp_path / "recipes" / "child.yaml", "_base_: ../base/mid.yaml\nseed: 5\n")
    cfg = load_config(child)
    assert cfg.epochs == 3 and cfg.seed == 5
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.clip_grad == 0.3  # nested merge keeps siblings
    assert cfg.hssl.heads == ["resmlp"] and cfg.hssl.depth == 2 and cfg.hssl.image_level is True
    twin = _write(tmp_path / "recipes" / "twin.yaml", "_base_: child.yaml\nhssl: null\n")
    assert load_config(twin).hssl is None
    # override beats the file
    assert load_config(child, ["epochs=9"]).epochs == 9


def test_base_cycle_and_missing_file(tmp_path):
    a = _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(a)
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = _write(tmp_path / "bad.yaml", "epochs: [1\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)


def test_subkey_of_null_section_turns_it_on_with_defaults(tmp_path):
    base = _write(tmp_path / "base.yaml", "hssl: null\n")
    cfg = load_config(base, ["hssl.depth=2"])
    assert cfg.hssl.depth == 2 and cfg.hssl.heads == ["convnext"]


def test_dump_yaml_round_trip_and_atomic(tmp_path):
    cfg = load_config(None, ["optim.lr=2e-4", "hssl.heads=[vit,swin]", "mask.pred_ratio=0.25", "mask.pred_ratio_var=0.1"])
    out = tmp_path / "run" / "config.yaml"
    dump_yaml(cfg, str(out))
    assert load_config(str(out)).to_dict() == cfg.to_dict()
    assert os.listdir(out.parent) == ["config.yaml"]  # no temporary file left
    d = cfg.to_dict()
    assert type(d) is dict and type(d["optim"]) is dict
    assert config_from_dict(d) == cfg


def test_yaml_file_float_without_dot(tmp_path):
    # PyYAML reads 1e-3 as a string; float fields accept it
    p = _write(tmp_path / "c.yaml", "optim:\n  lr: 1e-3\n  min_lr: 1e-6\n")
    cfg = load_config(p)
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.optim.min_lr == pytest.approx(1e-6)


def test_schema_sections_cover_issue():
    for sec in ("model", "hssl", "optim", "loss", "data", "mask", "eval"):
        assert isinstance(SCHEMA[sec], dict)
    for k in ("warmup_teacher_temp", "teacher_temp", "warmup_teacher_patch_temp", "teacher_patch_temp",
              "student_temp", "center_momentum", "lambda1", "lambda2"):
        assert k in SCHEMA["loss"]
    for k in ("pred_ratio", "pred_ratio_var", "pred_shape", "pred_start_epoch", "pred_aspect_ratio"):
        assert k in SCHEMA["mask"]


def test_non_strict_drops_unknown_keys_of_old_checkpoints():
    old = {"epochs": 4, "data": {"retired_option": True, "subset": 0.5}, "gone": 1}
    with pytest.raises(ConfigError, match="retired_option|gone"):
        config_from_dict(old)
    with pytest.warns(UserWarning, match="data.retired_option.*gone|gone.*data.retired_option"):
        cfg = config_from_dict(old, strict=False)
    assert cfg.epochs == 4 and cfg.data.subset == 0.5


# ----------------------------------------------------------------------------- a method's own checks
def test_mocov3_queue_errors_come_from_the_method_spec():
    """Issue 12: config.py names no method; MoCo v3 checks its own section (MethodSpec.check_config)."""
    with pytest.raises(ConfigError, match=r"^config key 'mocov3.queue_size' = 1000 must be a positive multiple "
                                          r"of batch_size = 256 with mocov3.negatives=queue \(each step"):
        load_config(None, ["method=mocov3", "mocov3.negatives=queue", "mocov3.queue_size=1000"])
    with pytest.raises(ConfigError, match=r"^config key 'mocov3.queue_size' = 512 is set but mocov3.negatives="
                                          r"batch uses no queue: set mocov3.negatives=queue or batch\+queue$"):
        load_config(None, ["method=mocov3", "mocov3.negatives=batch", "mocov3.queue_size=512"])
    assert load_config(None, ["method=mocov3", "mocov3.negatives=batch+queue", "mocov3.queue_size=512"])


def test_config_calls_each_methods_own_check(monkeypatch):
    import dataclasses
    from jhssl.methods import registry
    seen = []

    def check(cfg):
        seen.append(cfg.method)
        return "config key 'loss.teacher_temp' is wrong for dino (test hook)" if cfg.loss.teacher_temp > 0.05 else None

    monkeypatch.setitem(registry.SPECS, "dino", dataclasses.replace(registry.SPECS["dino"], check_config=check))
    with pytest.raises(ConfigError, match=r"^config key 'loss.teacher_temp' is wrong for dino \(test hook\)$"):
        load_config(None, ["method=dino", "loss.teacher_temp=0.07"])
    assert load_config(None, ["method=dino", "loss.teacher_temp=0.04"]).method == "dino"
    load_config(None, ["method=ibot"])  # another method's hook is not called
    assert seen == ["dino", "dino"]
