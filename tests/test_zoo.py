"""Model zoo: the registry file, file:// and local weights, create_model(pretrained=...), checksums,
downloads (from a local HTTP server) and the offline error.

No test touches the network: remote entries point at 127.0.0.1.
"""
import functools
import hashlib
import http.server
import importlib.util
import os
import socket
import threading

import numpy as np
import pytest
import yaml

import jhssl  # noqa: F401  (sets Jittor's environment first)
from jhssl import convert, safetensors_io, zoo

import jittor as jt  # noqa: E402,F401
import models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _weights(seed=0):
    """Random tiny-ViT weights in a DINO-style release layout (teacher/backbone prefix + a head)."""
    shapes = convert.model_shapes(models.create_model("vit_small", **VIT))
    rng = np.random.RandomState(seed)
    sd = {k: rng.randn(*s).astype(np.float32) for k, s in shapes.items()}
    return sd


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def zoo_env(tmp_path, monkeypatch):
    """An isolated cache ($JHSSL_HOME) and registry ($JHSSL_ZOO); returns a function writing entries."""
    home = tmp_path / "home"
    monkeypatch.setenv("JHSSL_HOME", str(home))
    reg = tmp_path / "zoo.yaml"
    monkeypatch.setenv("JHSSL_ZOO", str(reg))

    def write(entries):
        base = dict(arch="vit_small", model_kwargs=dict(VIT), source="test", licence="none")
        reg.write_text(yaml.safe_dump({"entries": [dict(base, **e) for e in entries]}))

    write.home = home
    return write


def test_registry_lists_the_public_releases_with_required_fields():
    reg = zoo.entries(zoo.DEFAULT_REGISTRY)
    for name, arch, url in [
        ("dino_vits16", "vit_small", "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
                                     "dino_deitsmall16_pretrain.pth"),
        ("dino_vitb16", "vit_base", "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/"
                                    "dino_vitbase16_pretrain.pth"),
        ("mae_vitb16", "vit_base", "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"),
    ]:
        assert reg[name].arch == arch and reg[name].url == url
    assert reg["ibot_vits16"].url.endswith("/vits_16/checkpoint_teacher.pth")
    assert reg["ibot_vitb16"].url.endswith("/vitb_16/checkpoint_teacher.pth")
    assert not any(n.startswith("mae_vits") for n in reg)  # MAE released no ViT-S
    assert any(e.is_local for e in reg.values())            # our own exports
    for e in reg.values():
        assert e.file and e.source and e.licence and models.list_models(e.arch) and e.arch in models.list_models()


def test_file_url_local_path_and_create_model_pretrained(tmp_path, zoo_env):
    sd = _weights()
    path = str(tmp_path / "tiny.safetensors")
    # A flattened DINO-style file: 'teacher.backbone.<key>' plus a projection head to drop.
    safetensors_io.save_file({**{"teacher.backbone." + k: v for k, v in sd.items()},
                              "teacher.head.mlp.0.weight": np.zeros((4, 32), np.float32)}, path)
    zoo_env([dict(name="tiny", file="tiny.safetensors", url="file://" + path, sha256=_sha(path))])
    for pretrained in ("tiny", path, "file://" + path):
        m = models.create_model("vit_small", pretrained=pretrained, use_mask_token=True, **VIT)
        for k, v in sd.items():
            np.testing.assert_array_equal(m.state_dict()[k].numpy(), v)
    loaded = zoo.load("tiny")
    assert set(loaded) == set(sd) and np.array_equal(loaded["pos_embed"], sd["pos_embed"])
    assert zoo.verify("tiny") == "ok"


def test_own_exports_expand_jhssl_home(zoo_env):
    home = zoo_env.home
    (home / "exports").mkdir(parents=True)
    path = home / "exports" / "mine.safetensors"
    safetensors_io.save_file(_weights(1), str(path))
    zoo_env([dict(name="mine", file="mine.safetensors", url="file://${JHSSL_HOME}/exports/mine.safetensors",
                  sha256=None)])
    assert zoo.resolve("mine") == str(path)
    assert zoo.verify("mine") == "unverified"
    np.testing.assert_array_equal(zoo.load("mine")["cls_token"], _weights(1)["cls_token"])


def test_checksum_mismatch_is_an_error(tmp_path, zoo_env):
    path = str(tmp_path / "w.safetensors")
    safetensors_io.save_file(_weights(), path)
    zoo_env([dict(name="bad", file="w.safetensors", url="file://" + path, sha256="0" * 64)])
    with pytest.raises(zoo.ChecksumError, match="checksum mismatch"):
        zoo.verify("bad")
    with pytest.raises(zoo.ChecksumError):
        models.create_model("vit_small", pretrained="bad", **VIT)
    spec = importlib.util.spec_from_file_location("run_zoo_cli", os.path.join(ROOT, "run", "zoo.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["verify", "bad"]) == 1


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_caches(http_dir, zoo_env):
    served, url = http_dir
    path = str(served / "remote.safetensors")
    safetensors_io.save_file(_weights(2), path)
    zoo_env([dict(name="remote", file="remote.safetensors", url=url + "/remote.safetensors", sha256=_sha(path)),
             dict(name="tampered", file="tampered.safetensors", url=url + "/remote.safetensors", sha256="f" * 64)])
    dest = zoo.download("remote")
    assert dest == str(zoo_env.home / "remote.safetensors") and _sha(dest) == _sha(path)
    m = models.create_model("vit_small", pretrained="remote", **VIT)
    np.testing.assert_array_equal(m.state_dict()["norm.weight"].numpy(), _weights(2)["norm.weight"])
    # A download whose checksum does not match is an error, and nothing is left in the cache.
    with pytest.raises(zoo.ChecksumError):
        zoo.download("tampered")
    assert sorted(os.listdir(zoo_env.home)) == ["remote.safetensors"]


def test_offline_missing_file_names_the_exact_path(zoo_env):
    with socket.socket() as s:  # a port nobody listens on: connection refused, as on an offline machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    zoo_env([dict(name="far", file="far_weights.pth", url=f"http://127.0.0.1:{port}/far_weights.pth", sha256=None)])
    expected = str(zoo_env.home / "far_weights.pth")
    with pytest.raises(zoo.ZooError) as e:
        models.create_model("vit_small", pretrained="far", **VIT)
    assert expected in str(e.value) and "put it at exactly" in str(e.value)
    assert not os.path.exists(expected)
    with pytest.raises(zoo.ZooError, match="known entries: far"):
        zoo.resolve("no_such_entry")
