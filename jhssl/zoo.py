"""Model zoo: named pretrained weights (``configs/zoo.yaml``), a download cache, and loading into models.

* :func:`create_pretrained` (``jhssl.zoo.create_pretrained('vit_small', 'dino_vits16')``) builds the
  model and calls :func:`load_into`; ``pretrained`` may also be a local path or a ``file://`` URL.
  Importing this module registers :func:`load_into` with ``models.registry``, so
  ``models.create_model('vit_small', pretrained='dino_vits16')`` does the same (models/ never
  imports the zoo: it is the bottom layer).
* :func:`load` returns an entry's state dict (numpy, timm keys).
* Files are cached under ``$JHSSL_HOME`` (default ``~/.cache/jhssl``), one file per entry, named by
  the entry's ``file``. On a machine without network, put the file there by hand: a missing file
  that cannot be downloaded is an error that names the exact path to use.
* ``sha256`` is checked after every download and before every load; a mismatch is an error (a
  download that does not match is not kept). Entries without a published checksum (``sha256: null``)
  are reported as 'unverified'.

The registry file can be replaced with ``$JHSSL_ZOO`` (a path to another YAML file of the same form).
Released checkpoints are pickles, which can run code when loaded: the loaders unpickle through an
allow-list (see :mod:`jhssl.weights_io`); only add entries from sources you trust.
"""
import hashlib
import os
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from typing import Any, Dict, Iterable, Optional

from . import convert, timm_reference, weights_io
from .errors import UserError
from .fileio import atomic_write

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_REGISTRY = os.path.join(REPO_ROOT, "configs", "zoo.yaml")
REQUIRED = ("name", "arch", "file", "url", "sha256", "source", "licence")
DOWNLOAD_TIMEOUT_S = 30


class ZooError(UserError, RuntimeError):
    """A zoo entry cannot be found, fetched or verified."""


class ChecksumError(ZooError):
    pass


class ZooEntry:
    def __init__(self, d: Dict[str, Any]):
        missing = [k for k in REQUIRED if k not in d]
        if missing:
            raise ZooError(f"zoo entry {d.get('name', d)!r} lacks field(s): {', '.join(missing)}")
        self.name: str = str(d["name"])
        self.arch: str = str(d["arch"])
        self.file: str = str(d["file"])
        self.url: str = str(d["url"])
        self.sha256: Optional[str] = (str(d["sha256"]).lower() if d["sha256"] else None)
        self.md5_prefix: Optional[str] = d.get("md5_prefix")
        self.source: str = str(d["source"])
        self.licence: str = str(d["licence"])
        self.model_kwargs: Dict[str, Any] = dict(d.get("model_kwargs") or {})
        self.checkpoint_key: Optional[str] = d.get("checkpoint_key")
        self.note: str = str(d.get("note", ""))
        if self.sha256 is not None and (len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)):
            raise ZooError(f"zoo entry '{self.name}': sha256 must be 64 hex digits or null, got {d['sha256']!r}")

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file://")


def home() -> str:
    """The weight cache: ``$JHSSL_HOME`` or ``~/.cache/jhssl``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("JHSSL_HOME") or os.path.join("~", ".cache", "jhssl")))


def registry_path() -> str:
    return os.environ.get("JHSSL_ZOO") or DEFAULT_REGISTRY


def entries(path: Optional[str] = None) -> "OrderedDict[str, ZooEntry]":
    import yaml
    path = path or registry_path()
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    items = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ZooError(f"{path}: expected a top-level 'entries:' list")
    out: "OrderedDict[str, ZooEntry]" = OrderedDict()
    for d in items:
        e = ZooEntry(d)
        if e.name in out:
            raise ZooError(f"{path}: zoo entry '{e.name}' is defined twice")
        out[e.name] = e
    return out


def get_entry(name: str) -> ZooEntry:
    reg = entries()
    if name not in reg:
        raise ZooError(f"unknown zoo entry '{name}' and no such file; known entries: {', '.join(reg)}")
    return reg[name]


def _file_url_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    path = urllib.parse.unquote(parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") \
        else urllib.parse.unquote(parsed.path)
    # ${JHSSL_HOME} etc. let the registry point at our own exports wherever the cache lives.
    if "${JHSSL_HOME}" in path or "$JHSSL_HOME" in path:
        path = path.replace("${JHSSL_HOME}", home()).replace("$JHSSL_HOME", home())
    return os.path.expanduser(os.path.expandvars(path))


def cached_path(entry: ZooEntry) -> str:
    """Where the entry's file lives: its file:// path, or ``<home>/<file>``."""
    return _file_url_path(entry.url) if entry.is_local else os.path.join(home(), entry.file)


def _check_digests(entry: ZooEntry, path: str, sha256: Optional[str] = None, md5: Optional[str] = None) -> None:
    if sha256 is None and (entry.sha256 or entry.md5_prefix):
        sha256, md5 = _digests(path)
    if entry.sha256 and sha256 != entry.sha256:
        raise ChecksumError(f"checksum mismatch for zoo entry '{entry.name}' ({path}): sha256 {sha256}, "
                            f"expected {entry.sha256}; the file is damaged or not the published one")
    if entry.md5_prefix and not (md5 or "").startswith(str(entry.md5_prefix).lower()):
        raise ChecksumError(f"checksum mismatch for zoo entry '{entry.name}' ({path}): md5 {md5} does not start "
                            f"with the published {entry.md5_prefix}")


def _digests(path: str):
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def download(name: str, force: bool = False, progress: bool = False) -> str:
    """Fetch an entry into the cache (atomically; verified) and return its path."""
    entry = get_entry(name)
    dest = cached_path(entry)
    if entry.is_local:
        if not os.path.isfile(dest):
            raise ZooError(f"zoo entry '{name}' points at {dest}, which does not exist; export or copy the "
                           f"weights there first (e.g. python run/export.py --checkpoint <ckpt> --out {dest} "
                           "--safetensors)")
        _check_digests(entry, dest)
        return dest
    if os.path.isfile(dest) and not force:
        _check_digests(entry, dest)
        return dest
    sha, md5 = hashlib.sha256(), hashlib.md5()

    def fetch(f):
        try:
            with urllib.request.urlopen(entry.url, timeout=DOWNLOAD_TIMEOUT_S) as r:
                total = int(r.headers.get("Content-Length") or 0)
                done = 0
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
                    sha.update(block)
                    md5.update(block)
                    done += len(block)
                    if progress and total:
                        print(f"\r{name}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB", end="", flush=True)
                if progress:
                    print()
                if total and done != total:
                    raise ZooError(f"download of {entry.url} stopped after {done} of {total} bytes")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise ZooError(
                f"cannot download zoo entry '{name}' from {entry.url} ({reason}). On an offline machine, "
                f"download it elsewhere and put it at exactly: {dest}") from None
        # Verify before the rename: a file that fails the check never appears under its name.
        _check_digests(entry, "<download>", sha.hexdigest(), md5.hexdigest())

    atomic_write(dest, fetch)
    return dest


def verify(name: str, trusted: bool = False) -> str:
    """'ok', 'unverified' (no published checksum), or 'missing'; raises :class:`ChecksumError` on a mismatch.

    A cached file is also read (through the allow-list loader: a pickle with other globals raises
    :class:`jhssl.weights_io.UnsafePickleError` unless ``trusted``), so 'ok' means it loads.
    """
    entry = get_entry(name)
    path = cached_path(entry)
    if not os.path.isfile(path):
        return "missing"
    _check_digests(entry, path)
    weights_io.load_checkpoint(path, trusted=trusted)
    return "ok" if entry.sha256 else "unverified"


def resolve(pretrained: str, download_missing: bool = True) -> str:
    """A zoo name, a local path or a file:// URL -> a verified local file path."""
    pretrained = os.fspath(pretrained)
    if pretrained.startswith("file://"):
        path = _file_url_path(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained weights not found: {path} (from {pretrained})")
        return path
    if os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.expanduser(pretrained)
    reg = entries()
    if pretrained not in reg:
        raise ZooError(f"'{pretrained}' is neither a file nor a zoo entry; known entries: {', '.join(reg)}")
    entry = reg[pretrained]
    path = cached_path(entry)
    if os.path.isfile(path):
        _check_digests(entry, path)
        return path
    if not download_missing or entry.is_local:
        raise ZooError(f"weights for zoo entry '{pretrained}' are not at {path}; "
                       + ("export or copy them there" if entry.is_local else
                          f"download them from {entry.url} and put them at exactly that path"))
    return download(pretrained)


def _target_for(arch: str, model_kwargs: Dict[str, Any]) -> Dict[str, tuple]:
    name = timm_reference.timm_reference_name(arch, model_kwargs.get("patch_size"), model_kwargs.get("img_size"),
                                              model_kwargs.get("window_size"))
    ref = timm_reference.timm_reference(name)
    if ref is not None:
        return ref
    _, _, target = convert.build_target(arch, **model_kwargs)
    return target


def load(name: str, arch: Optional[str] = None, which: Optional[str] = None,
         trusted: bool = False) -> Dict[str, Any]:
    """The state dict of a zoo entry (or file), as numpy arrays with timm keys (heads dropped)."""
    entry = entries().get(name)
    path = resolve(name)
    arch = arch or (entry.arch if entry else None)
    which = which or (entry.checkpoint_key if entry else None)
    obj = weights_io.load_checkpoint(path, trusted=trusted)
    if arch is None:
        sd = convert.strip_prefixes(convert.unwrap(obj, which))
        return sd
    target = _target_for(arch, entry.model_kwargs if entry else {})
    sd, report = convert.convert_state_dict(obj, target, which=which)
    report.check_strict(path)
    return sd


def load_into(model, pretrained: str, arch: Optional[str] = None, which: Optional[str] = None,
              trusted: bool = False, verbose: bool = True) -> convert.ConversionReport:
    """Load ``pretrained`` (zoo name, path or file:// URL) into ``model``, strictly.

    Heads, MAE decoders and stale buffers in the file are dropped (and reported); position tables
    are resized to the model; a missing or mismatching tensor is an error. A ``mask_token`` the
    model has but the weights lack keeps its initial value.
    """
    entry = entries().get(pretrained) if not os.path.exists(pretrained) else None
    path = resolve(pretrained)
    which = which or (entry.checkpoint_key if entry else None)
    obj = weights_io.load_checkpoint(path, trusted=trusted)
    target = convert.model_shapes(model)
    optional = [k for k in target if k.endswith("mask_token")]
    sd, report = convert.convert_state_dict(obj, target, which=which, optional=optional)
    report.check_strict(f"{pretrained} -> {arch or type(model).__name__}")
    from .checkpoint import load_state_dict_strict
    load_state_dict_strict(model, sd, strict=True, what=arch or type(model).__name__, optional=optional)
    if verbose:
        print(f"loaded pretrained weights '{pretrained}' ({path}) into {arch or type(model).__name__}: "
              f"{len(report.loaded)} tensors" + (f", dropped {len(report.dropped)}" if report.dropped else "")
              + (f", resized {', '.join(report.resized)}" if report.resized else ""))
    return report


def list_entries(names: Optional[Iterable[str]] = None):
    """Rows of (name, arch, status, path, source) for the CLI."""
    reg = entries()
    rows = []
    for name in (names or reg):
        e = reg[name] if name in reg else get_entry(name)
        path = cached_path(e)
        rows.append((e.name, e.arch, "cached" if os.path.isfile(path) else "missing", path, e.source, e.licence))
    return rows


def create_pretrained(name: str, pretrained: str, trusted: bool = False, **model_kwargs):
    """``models.create_model(name, **model_kwargs)`` with ``pretrained`` (zoo name, path or file:// URL) loaded."""
    import models
    model = models.create_model(name, **model_kwargs)
    load_into(model, pretrained, arch=name, trusted=trusted)
    return model


def _register() -> None:
    from models.registry import set_pretrained_loader
    set_pretrained_loader(lambda model, pretrained, arch: load_into(model, pretrained, arch=arch))


_register()
