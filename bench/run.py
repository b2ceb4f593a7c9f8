"""``make bench``: the standard matching workload on tradeplane's engine and on Liquibook.

Each engine runs in a child process of its own (so peak memory is its own and one
run cannot warm the other's caches), several times, alternating; the median is
printed, because a shared 2-core machine is noisy. Liquibook runs as the issue that
set the target describes: a ``DepthOrderBook`` with an order listener recording
fills (the fair comparison with an engine that reports every event), and once bare
with no listener (the mark to beat). Both must trade the same quantity.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from liquibook_driver import run_liquibook as drive_liquibook
from tradeplane_engine.workload import Workload, generate


def run_tradeplane(workload: Workload) -> dict[str, float]:
    """Apply every command; the timed loop takes each command's events and lets them go.

    That is what the engine service does (encode, publish, drop), and what Liquibook's
    listener is held to: see every fill as it happens. An untimed second pass keeps the
    trades to count them, and both passes must end in the same state hash.
    """
    import tradeplane_engine.core.matching as matching
    from tradeplane_engine.core import Engine, Trade
    from tradeplane_engine.workload import SPEC, to_commands

    commands = to_commands(workload)
    del workload
    engine = Engine(SPEC)
    apply = engine.apply
    events = 0
    gc.collect()
    start = time.perf_counter()
    for command in commands:
        events += len(apply(command))
    seconds = time.perf_counter() - start

    check = Engine(SPEC)
    trades = [event for command in commands for event in check.apply(command)
              if type(event) is Trade]
    if check.state_hash() != engine.state_hash():
        raise SystemExit("the timed and the checking pass disagree")
    return {
        "seconds": seconds,
        "trades": len(trades),
        "traded_quantity": sum(trade.quantity for trade in trades),
        "events": events,
        "compiled": float(matching.__file__.endswith((".so", ".pyd"))),
    }


def run_liquibook(workload: Workload, listener: bool) -> dict[str, float]:
    result = drive_liquibook(workload, listener=listener)
    return {"seconds": result.seconds, "trades": result.trades,
            "traded_quantity": result.traded_quantity}


def child(engine: str, workload_file: str, repeat: int) -> None:
    """Run one engine ``repeat`` times on fresh books in this process; print the figures.

    The first pass in a new process also pays for growing the heap; a service runs
    for days, so every pass counts and the parent takes the median of all of them.
    """
    workload = msgspec.msgpack.decode(Path(workload_file).read_bytes(),
                                      type=list[tuple[str, int, int, int, int]])
    for _ in range(repeat):
        if engine == "tradeplane":
            figures = run_tradeplane(workload)
        else:
            figures = run_liquibook(workload, listener=engine == "liquibook")
        figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures), flush=True)


def spawn(engine: str, workload_file: str, repeat: int) -> list[dict[str, float]]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", engine, workload_file, str(repeat)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line) for line in output.strip().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="child processes per engine")
    parser.add_argument("--repeat", type=int, default=3, help="passes in each child")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    print(f"standard workload: {args.commands:,} commands, seed {args.seed}")
    workload = generate(args.commands, args.seed)
    kinds = {kind: sum(1 for item in workload if item[0] == kind)
             for kind in ("limit", "ioc", "cancel")}
    print("  " + ", ".join(f"{kind} {count:,}" for kind, count in kinds.items()))
    engines = ["tradeplane", "liquibook", "liquibook-bare"]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    with tempfile.NamedTemporaryFile(suffix=".msgpack") as handle:
        handle.write(msgspec.msgpack.encode(workload))
        handle.flush()
        for run in range(args.runs):
            for name in engines:
                results[name].extend(spawn(name, handle.name, args.repeat))
            print(f"  process {run + 1}/{args.runs}: " + ", ".join(
                f"{name} " + " ".join(f"{args.commands / r['seconds'] / 1e3:,.0f}k"
                                      for r in results[name][-args.repeat:])
                for name in engines))

    commands: int = args.commands

    def rate(name: str) -> float:
        return statistics.median(commands / r["seconds"] for r in results[name])

    ours = results["tradeplane"][-1]
    theirs = results["liquibook"][-1]
    print()
    print(f"{'engine':<36}{'commands/s':>14}{'trades':>11}{'traded lots':>14}{'peak MiB':>10}")
    rows = [
        ("tradeplane (full event output)" + (" [compiled]" if ours["compiled"] else " [pure]"),
         "tradeplane"),
        ("liquibook DepthOrderBook + listener", "liquibook"),
        ("liquibook DepthOrderBook, no listener", "liquibook-bare"),
    ]
    for label, name in rows:
        last = results[name][-1]
        last["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results[name])
        traded = f"{int(last['traded_quantity']):,}" if name != "liquibook-bare" else "n/a"
        trades = f"{int(last['trades']):,}" if name != "liquibook-bare" else "n/a"
        print(f"{label:<36}{rate(name):>14,.0f}{trades:>11}{traded:>14}"
              f"{last['peak_rss_mib']:>10,.0f}")
    print(f"tradeplane events emitted: {int(ours['events']):,}")
    print(f"ratio tradeplane / liquibook with listener: "
          f"{rate('tradeplane') / rate('liquibook'):.2f}")
    print(f"ratio tradeplane / liquibook bare:          "
          f"{rate('tradeplane') / rate('liquibook-bare'):.2f}")
    agree = ours["traded_quantity"] == theirs["traded_quantity"]
    print(f"traded quantity agrees: {'yes' if agree else 'NO'} "
          f"({int(ours['traded_quantity']):,} vs {int(theirs['traded_quantity']):,})")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
