"""The `chaintwin` command: run experiments, redraw reports, check the machine, test."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from testbed.errors import ChaintwinError

PYTEST_NO_TESTS = 5
EXIT_UNTRUSTED = 3
"""`run --strict` when the run's health is not "ok" (unreliable or unknown)."""


def print_health(man: dict[str, object]) -> str:
    """Print a run's status on stdout and, unless its health is ok, a loud warning with
    the reasons and periods on stderr; returns the health status ("ok" when the run has
    none to judge, as simulations)."""
    health = man.get("health")
    print(f"status: {man.get('status')}")
    chain = man.get("chain")
    live = chain.get("liveness") if isinstance(chain, dict) else None
    if isinstance(live, dict) and live.get("stalls"):
        print(f"WARNING: the chain STALLED (no block for > {live['stall_threshold_s']:g} s "
              "while transactions waited):", file=sys.stderr)
        for st in live["stalls"]:
            why = (" (expected: more than f validators were down)" if st.get("expected")
                   else "")
            print(f"  stalled: {st['from_s']:.1f}-{st['to_s']:.1f} s ({st['length_s']:.1f} s)"
                  f"{why}", file=sys.stderr)
    if not isinstance(health, dict) or health.get("status") == "ok":
        return "ok"
    status = str(health.get("status"))
    if status == "unreliable":
        head = ("WARNING: this run is UNRELIABLE: the emulator could not keep up, so its "
                "numbers may measure the emulator, not the system")
    else:
        head = f"WARNING: this run's health is {status}: it could not be checked fully"
    print(head, file=sys.stderr)
    for reason in health.get("reasons", []):
        print(f"  reason: {reason}", file=sys.stderr)
    for p in health.get("periods", []):
        print(f"  period: {p['start_s']:.1f}-{p['end_s']:.1f} s {p['kind']}: {p['detail']}",
              file=sys.stderr)
    return status


def _cmd_run(args: argparse.Namespace) -> int:
    from testbed import config, manifest, runner

    loaded = config.load_experiment(args.experiment, args.set or [])
    results = Path(args.results) if args.results else runner.DEFAULT_RESULTS
    try:
        run_dir = runner.run(loaded, results, show_progress=not args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: network torn down; partial results kept", file=sys.stderr)
        return 130
    print(f"results: {run_dir}")
    for name in sorted(p.name for p in run_dir.iterdir()):
        print(f"  {name}")
    health = print_health(manifest.read(run_dir))
    return EXIT_UNTRUSTED if args.strict and health != "ok" else 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from testbed import config

    for f in args.files:
        data = config.read_yaml(Path(f))
        if "hosts" in data and "links" in data:
            topo = config.load_topology(Path(f))
            print(f"{f}: topology {topo.name!r} ok ({len(topo.hosts)} hosts, "
                  f"{len(topo.links)} links)")
        else:
            loaded = config.load_experiment(f, args.set or [])
            print(f"{f}: experiment {loaded.experiment.name!r} ok "
                  f"(mode {loaded.experiment.mode})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from testbed import manifest, runner

    for fig in runner.report(Path(args.run_dir)):
        print(fig)
    print_health(manifest.read(Path(args.run_dir)))  # as recorded; report does not re-judge
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from testbed import capabilities

    rep = capabilities.probe()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        print(rep.render())
    return 0 if rep.can_emulate else 1


def _cmd_test(args: argparse.Namespace, extra: list[str]) -> int:
    argv = [sys.executable, "-m", "pytest"]
    if args.smoke:
        argv += ["-m", "smoke"]
    argv += extra
    code = subprocess.call(argv, cwd=Path(__file__).resolve().parent.parent)
    if code == PYTEST_NO_TESTS:
        print("chaintwin test: pytest collected no tests for this selection (exit 5); "
              "treating as success")
        return 0
    return code


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chaintwin", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run an experiment YAML file")
    p.add_argument("experiment")
    p.add_argument("--set", action="append", metavar="PATH=VALUE",
                   help="override a field, e.g. --set duration=5 --set links.bottleneck.bw=50mbit")
    p.add_argument("--results", help="results folder (default: results/ in the project)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("--strict", action="store_true",
                   help=f"exit {EXIT_UNTRUSTED} unless the run's health is ok (default: "
                        "warn and exit 0)")
    p = sub.add_parser("validate", help="check experiment/topology YAML files, run nothing")
    p.add_argument("files", nargs="+")
    p.add_argument("--set", action="append", metavar="PATH=VALUE")
    p = sub.add_parser("report", help="redraw a run's figures from its saved artifacts")
    p.add_argument("run_dir")
    p = sub.add_parser("doctor", help="what this machine can emulate")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("test", help="run the test suite (extra args go to pytest)")
    p.add_argument("--smoke", action="store_true", help="only the smoke subset")
    for name in ("node", "client", "genesis"):
        sub.add_parser(name, help=f"blockchain {name} (see nodes/)", add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("node", "client", "genesis"):
        from nodes import cli as nodes_cli

        return int(nodes_cli.main(argv) or 0)
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and args.command != "test":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "test":
            return _cmd_test(args, extra)
        return {"run": _cmd_run, "validate": _cmd_validate, "report": _cmd_report,
                "doctor": _cmd_doctor}[args.command](args)
    except ChaintwinError as exc:
        print(f"chaintwin: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
