#!/usr/bin/env python
"""The model zoo: list, download and verify pretrained weights (configs/zoo.yaml).

    python run/zoo.py list
    python run/zoo.py download dino_vits16            # into $JHSSL_HOME (default ~/.cache/jhssl)
    python run/zoo.py verify                          # every cached entry: ok / unverified / missing

On a machine without network, download the file elsewhere and put it at the path `list` shows.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jhssl import zoo, weights_io  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show the entries and where their files go")
    d = sub.add_parser("download", help="download entries into the cache (verified)")
    d.add_argument("names", nargs="*", help="entries (default: all remote entries)")
    d.add_argument("--force", action="store_true", help="download again even when cached")
    v = sub.add_parser("verify", help="check cached files against their checksums")
    v.add_argument("names", nargs="*", help="entries (default: all)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            print(f"registry: {zoo.registry_path()}\ncache: {zoo.home()}")
            for name, arch, status, path, source, licence in zoo.list_entries():
                print(f"{name:18s} {arch:12s} {status:7s} {path}\n{'':18s} {source} [{licence}]")
            return 0
        if args.cmd == "download":
            names = args.names or [n for n, e in zoo.entries().items() if not e.is_local]
            for n in names:
                path = zoo.download(n, force=args.force, progress=True)
                print(f"{n}: {path} sha256 {weights_io.sha256sum(path)} ({zoo.verify(n)})")
            return 0
        names = args.names or list(zoo.entries())
        bad = 0
        for n in names:
            try:
                status = zoo.verify(n)
            except zoo.ChecksumError as e:
                status, bad = f"MISMATCH: {e}", bad + 1
            print(f"{n:18s} {status}")
        return 1 if bad else 0
    except zoo.ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
