"""The ``opifex`` command: ``opifex bench <suite> [--quick]`` and ``opifex demo``."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    from opifex.benchmarks import SUITES

    parser = argparse.ArgumentParser(prog="opifex", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark suite against its peers")
    bench.add_argument("suite", choices=sorted(SUITES), help="suite to run")
    bench.add_argument("--quick", action="store_true", help="seconds-long version (CI smoke run)")
    bench.add_argument("--out", default="results", help="output root (default: results/)")
    bench.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="suite setting, repeatable (e.g. pinn: problems=burgers seeds=3 adam_steps=1000)",
    )
    demo = sub.add_parser("demo", help="a short showcase with progress bars and plots")
    demo.add_argument("--quick", action="store_true", help="smaller showcase")
    demo.add_argument("--out", default="results", help="output root (default: results/)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``opifex`` console script."""
    args = _parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.command == "bench":
        from opifex.benchmarks import run_suite

        options = {}
        for item in args.option:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise SystemExit(f"--option must look like NAME=VALUE, got {item!r}")
            options[name.strip()] = value.strip()
        run_suite(args.suite, quick=args.quick, out_root=args.out, options=options)
    elif args.command == "demo":
        from opifex.demo import run_demo

        run_demo(quick=args.quick, out_root=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
