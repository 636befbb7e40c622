#!/usr/bin/env python
"""The model zoo: list, download and verify pretrained weights (configs/zoo.yaml).

    python run/zoo.py list
    python run/zoo.py download dino_vits16            # into $JHSSL_HOME (default ~/.cache/jhssl)
    python run/zoo.py verify                          # every cached entry: ok / unverified / missing

On a machine without network, download the file elsewhere and put it at the path `list` shows.
"""
import sys

from jhssl import cli, weights_io, zoo


def main(argv=None):
    """Exit code 0, 1 (a checksum mismatch), or 2 after a one-line error."""
    return cli.run(_main, argv, prog="zoo")


def _main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show the entries and where their files go")
    d = sub.add_parser("download", help="download entries into the cache (verified)")
    d.add_argument("names", nargs="*", help="entries (default: all remote entries)")
    d.add_argument("--force", action="store_true", help="download again even when cached")
    v = sub.add_parser("verify", help="check cached files against their checksums")
    v.add_argument("names", nargs="*", help="entries (default: all)")
    v.add_argument("--trust-pickle", action="store_true", help=cli.TRUST_PICKLE_HELP)
    args = p.parse_args(argv)  # subcommands: parse_intermixed_args does not support them (no overrides here)
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
            status = zoo.verify(n, trusted=args.trust_pickle)
        except zoo.ChecksumError as e:
            status, bad = f"MISMATCH: {e}", bad + 1
        print(f"{n:18s} {status}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
