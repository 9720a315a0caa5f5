"""``python -m jaxflash.bench SUITE [SUITE ...]``: time jaxflash against its peers in one run.

Several suites run one after another in this one process (same machine state, same versions); each
gets its own table, JSON file and, with ``--record``, its own section in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from jaxflash.bench.harness import machine_info, markdown_table, run_suite
from jaxflash.bench.suites import SUITE_MODULES, all_suites, get_suite


def build_parser() -> argparse.ArgumentParser:
    suites = "\n".join(f"  {s.name:<12} {s.description}" for s in all_suites())
    parser = argparse.ArgumentParser(
        prog="python -m jaxflash.bench",
        description="Time jaxflash ops against their peers in the same run; report ratios and peak memory.",
        epilog=f"suites:\n{suites}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "suites",
        nargs="+",
        choices=sorted(SUITE_MODULES),
        metavar="SUITE",
        help="the suites to run, in order",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        metavar="N|SUITE=N,N",
        help="override the default sizes: plain numbers for every suite, SUITE=N,N,... for one",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke runs")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation included)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls; the median is reported")
    parser.add_argument(
        "--max-seconds", type=float, default=10.0, help="stop repeating a candidate after this"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the per-candidate peak-memory subprocesses"
    )
    parser.add_argument("--only", nargs="+", help="run only these candidates (and the baseline)")
    parser.add_argument(
        "--json", help="where to write the JSON (one suite only; default bench-results/SUITE-TIME.json)"
    )
    parser.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--benchmarks-file", default="BENCHMARKS.md", help="the file --record appends to")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and len(args.suites) > 1:
        parser.error("--json names one file: pass one suite, or leave --json out")
    try:
        args.sizes_by_suite = _parse_sizes(args.sizes, args.suites)
    except ValueError as e:
        parser.error(str(e))
    command = "python -m jaxflash.bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    failed = False
    for name in args.suites:
        failed |= _run_one(get_suite(name), args, command)
    return 1 if failed else 0


def _parse_sizes(tokens: list[str] | None, suites: list[str]) -> dict[str, list[int]]:
    """``--sizes`` as suite -> sizes: plain numbers apply to every suite, ``SUITE=N,N`` to one."""
    common: list[int] = []
    by_suite: dict[str, list[int]] = {}
    for token in tokens or ():
        name, sep, values = token.partition("=")
        try:
            if sep:
                if name not in suites:
                    raise ValueError(f"--sizes names suite {name!r}, which this run does not include")
                by_suite[name] = [int(v) for v in values.split(",") if v]
            else:
                common.append(int(token))
        except ValueError as e:
            if "--sizes names" in str(e):
                raise
            raise ValueError(f"--sizes takes integers or SUITE=N,N,...; got {token!r}") from e
    return {name: by_suite.get(name, common) for name in suites if by_suite.get(name, common)}


def _run_one(suite, args: argparse.Namespace, command: str) -> bool:
    """Runs one suite, prints and writes its results; True when a candidate errored."""
    info = machine_info()
    results = run_suite(
        suite,
        sizes=args.sizes_by_suite.get(suite.name),
        quick=args.quick,
        warmup=args.warmup,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        memory=not args.no_memory,
        only=args.only,
    )
    table = markdown_table(results)
    timing_note = (
        "CPU timings (no accelerator in this run)"
        if info["backend"] == "cpu"
        else f"{info['devices'][0]} timings"
    )
    header = (
        f"## {suite.name}: {suite.description}\n\n"
        f"{info['date']}; {timing_note}; {info['cpu_count']} CPU cores, {info['processor']}; "
        f"jax {info['jax']}, Python {info['python']}.\n"
        f"Command: `{command}`. Speedup = baseline median / candidate median"
        + (
            "; peak MiB = memory one call adds over its inputs, each candidate in its own process"
            if not args.no_memory
            else ""
        )
        + ".\n"
    )
    print(header)
    print(table)
    path = args.json or os.path.join("bench-results", f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(
            dict(suite=suite.name, command=command, machine=info, results=[r.__dict__ for r in results]),
            f,
            indent=2,
        )
    print(f"\nJSON written to {path}", file=sys.stderr)
    if args.record:
        with open(args.benchmarks_file, "a") as f:
            f.write("\n" + header + "\n" + table + "\n")
        print(f"table appended to {args.benchmarks_file}", file=sys.stderr)
    return any(r.status.startswith("error") for r in results)


if __name__ == "__main__":
    sys.exit(main())
