"""``verl-stable`` command line: ``doctor`` checks that the plugin really loads, here and in Ray; ``lab`` runs the
CPU lab (the paper's grid through verl's trainer, plots and a report; ``verl-stable lab --help``).

verl imports plugins at ``import verl`` and logs a failure only at debug level, so a broken install
shows up much later as "Unsupported loss mode: minirl" inside a Ray worker. ``doctor`` makes it loud.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
import textwrap

ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "verl_stable"

# Run in a fresh interpreter (and in a Ray worker): import verl only, report what got registered.
_PROBE = textwrap.dedent(
    """
    import json, sys
    import verl
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    print(json.dumps({"verl": verl.__version__, "plugin_loaded": "verl_stable.plugin" in sys.modules,
                      "losses": sorted(POLICY_LOSS_REGISTRY)}))
    """
)


def _registration_report() -> dict:
    """What `import verl` registered in this process (runs inside the Ray worker)."""
    import verl
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    return {
        "verl": verl.__version__,
        "plugin_loaded": "verl_stable.plugin" in sys.modules,
        "losses": sorted(POLICY_LOSS_REGISTRY),
    }


def _ok(flag: bool) -> str:
    return "ok  " if flag else "FAIL"


def plugin_policy_hint(environ=None) -> str | None:
    """Why verl would skip our entry point, from verl's own switch ``VERL_USE_EXTERNAL_PLUGINS``
    (``auto`` default, ``none``, or a comma list of entry-point names); None when it allows us."""
    import os

    policy = (environ if environ is not None else os.environ).get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip()
    if policy.lower() == "auto":
        return None
    allowed = {name.strip() for name in policy.lower().split(",") if name.strip()}
    if policy.lower() != "none" and ENTRY_POINT_NAME in allowed:
        return None
    return (
        f"VERL_USE_EXTERNAL_PLUGINS={policy} stops verl from loading the {ENTRY_POINT_NAME} plugin; unset it "
        f"or add {ENTRY_POINT_NAME} to the list"
    )


def doctor(ray_worker: bool = True, address: str | None = None, every_node: bool = False) -> int:
    import verl_stable
    from verl_stable.losses import LOSS_MODES

    failures = 0
    expected = set(LOSS_MODES)
    print(f"verl-stable {verl_stable.__version__} (python {sys.version.split()[0]})")
    for dist in ("torch", "verl", "transformers", "ray", "hydra-core"):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            version = "not installed"
        note = ""
        if dist == "verl" and version != verl_stable.VERL_VERSION:
            note = f"  <- verl-stable is built and tested against verl=={verl_stable.VERL_VERSION}"
            failures += 1
        print(f"  {dist:<13} {version}{note}")

    entry_points = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    print(f"[{_ok(bool(entry_points))}] entry point {ENTRY_POINT_GROUP}:{ENTRY_POINT_NAME} installed")
    if not entry_points:
        print("       reinstall verl-stable (pip install -e . / pip install verl-stable) on this node")
        return 1
    try:
        entry_points[0].load()
        print(f"[ok  ] plugin module {entry_points[0].value} imports")
    except Exception as exc:  # the error verl would swallow at debug level
        print(f"[FAIL] plugin module {entry_points[0].value} failed to import: {type(exc).__name__}: {exc}")
        return 1
    failures += _print_shims()

    fresh = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True)
    if fresh.returncode != 0:
        print(f"[FAIL] fresh interpreter `import verl`:\n{fresh.stderr[-2000:]}")
        failures += 1
    else:
        import json

        report = json.loads(fresh.stdout.strip().splitlines()[-1])
        missing = expected - set(report["losses"])
        ok = report["plugin_loaded"] and not missing
        failures += not ok
        print(f"[{_ok(ok)}] fresh interpreter: `import verl` registers {sorted(expected - missing)}")
        if not ok:
            hint = plugin_policy_hint()
            print(f"       missing: {sorted(missing)}" + (f": {hint}" if hint else
                  " (verl logs plugin import errors at debug level only; the import check above shows them)"))

    if address:
        failures += _check_ray_cluster(expected, address, every_node)
    elif ray_worker:
        failures += _check_ray_worker(expected)
    print("doctor: all checks passed" if failures == 0 else f"doctor: {failures} check(s) failed")
    return 0 if failures == 0 else 1


def _print_shims() -> int:
    """The plugin's process-wide changes (one table, ``verl_stable.integration.SHIMS``) with their state in this
    process, which has just loaded the plugin; a row that applies here, passes its gate and is still not
    installed is a failure."""
    from verl_stable import integration

    states = [integration.state(shim)[0] for shim in integration.SHIMS]
    missing = [shim.name for shim, what in zip(integration.SHIMS, states) if what == "NOT INSTALLED"]
    counts = ", ".join(f"{states.count(what)} {what}" for what in dict.fromkeys(states))
    print(f"[{_ok(not missing)}] {len(states)} process-wide changes of verl / vLLM (verl_stable.integration.SHIMS), "
          f"in this process: {counts}")
    print(textwrap.indent(integration.table(), "       "))
    return int(bool(missing))


def _check_ray_worker(expected: set[str]) -> int:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # address="local": a fresh instance of our own, even where `ray start` left a cluster running here or
        # RAY_ADDRESS names one (ray.init() would join it and refuse num_cpus); --address checks a running one.
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:

        @ray.remote(num_cpus=0)
        def probe() -> dict:
            return _registration_report()

        report = ray.get(probe.remote(), timeout=300)
    except Exception as exc:
        print(f"[FAIL] Ray worker: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if started_here:
            ray.shutdown()
    missing = expected - set(report["losses"])
    ok = report["plugin_loaded"] and not missing
    print(f"[{_ok(ok)}] Ray worker (verl {report['verl']}): plugin loaded, losses registered")
    if not ok:
        hint = plugin_policy_hint()
        print(f"       missing in the worker: {sorted(missing)}: " + (hint or "is verl-stable installed on every node?"))
    return int(not ok)


def _check_ray_cluster(expected: set[str], address: str, every_node: bool) -> int:
    """The probe in a Ray worker of a running cluster: on one node, or pinned to each alive node in turn."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:
        print(f"[FAIL] Ray cluster at {address}: {type(exc).__name__}: {exc}")
        return 1
    failures = 0
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]] if every_node else [None]

        @ray.remote(num_cpus=0)
        def probe() -> dict:
            import socket

            return {**_registration_report(), "host": socket.gethostname()}

        for node in nodes:
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False) if node else "DEFAULT"
            where = node["NodeManagerAddress"] if node else address
            try:
                report = ray.get(probe.options(scheduling_strategy=strategy).remote(), timeout=300)
            except Exception as exc:
                print(f"[FAIL] Ray node {where}: {type(exc).__name__}: {exc}")
                failures += 1
                continue
            missing = expected - set(report["losses"])
            ok = report["plugin_loaded"] and not missing
            failures += not ok
            print(f"[{_ok(ok)}] Ray node {where} ({report['host']}, verl {report['verl']}): plugin loaded, "
                  f"losses registered" + ("" if ok else f"; missing {sorted(missing)}: is verl-stable installed there?"))
        if every_node:
            print(f"[{_ok(not failures)}] {len(nodes)} node(s) of the Ray cluster at {address} checked")
    finally:
        ray.shutdown()
    return failures


def _summary() -> str:
    """The module docstring's first paragraph, whole (its first line stops mid-sentence)."""
    return " ".join(__doc__.split("\n\n")[0].split()).replace("``", "")


def _ray_checked(args) -> str:
    """What the quiet line may claim: only the Ray check that ran."""
    if args.address:
        return f" and on the Ray cluster at {args.address}" + (" (every node)" if args.every_node else "")
    return "" if args.no_ray else " and in a Ray worker"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:  # the lab has its own parser (options + Hydra overrides)
        from verl_stable.lab.run import main as lab_main

        return lab_main(argv[1:])
    parser = argparse.ArgumentParser(prog="verl-stable", description=_summary())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lab", help="the CPU lab: the paper's grid through verl's trainer, plots and a report", add_help=False)
    doc = sub.add_parser("doctor", help="check that the plugin loads here and in a Ray worker; non-zero on failure")
    doc.add_argument("--no-ray", action="store_true", help="skip the Ray worker check")
    doc.add_argument("--address", help="check the Ray cluster at this address (host:port) instead of starting one")
    doc.add_argument("--every-node", action="store_true", help="with --address: run the check on every alive node")
    doc.add_argument("--quiet", action="store_true", help="one line when all checks pass, the full report otherwise")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        if not args.quiet:
            return doctor(ray_worker=not args.no_ray, address=args.address, every_node=args.every_node)
        import contextlib
        import io
        import warnings

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            status = doctor(ray_worker=not args.no_ray, address=args.address, every_node=args.every_node)
        if status == 0:
            print(f"[doctor] verl-stable plugin loads in a fresh interpreter{_ray_checked(args)}: ok")
        else:
            print(buffer.getvalue(), end="")
        return status
    return 2


if __name__ == "__main__":
    sys.exit(main())
