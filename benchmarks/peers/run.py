"""Put the same workloads through task-queue and its peers on one throwaway redis-server.

    make bench-peers PEERS_ARGS="--latency --workers 1,2 --rounds 3"
                                     (everything: about 9 min on the 2-core VM)
    .venv-peers/bin/python benchmarks/peers/run.py [flags]

Flags:
  --tasks N          drain: no-op jobs per run (default 20,000)
  --workers 1,2      drain: run once per worker-process count in the list (default 1);
                     with more than one count, also prints each peer's scaling ratio
  --latency          also measure submit-to-start latency with one worker process
  --rate R           latency: steady submits per second (default 200)
  --seconds S        latency: seconds of submits (default 5, so 1,000 jobs)
  --rounds N         latency: measure every peer N times, in turns whose order
                     alternates, and pool each peer's delays (default 1): the VM's
                     speed drifts over minutes, and pooling spreads the drift over
                     every peer alike instead of favouring whoever ran first
  --no-drain         latency only
  --only a,b         a subset of: celery, rq, dramatiq, arq, taskiq, saq, huey, task-queue
  --timeout S        drain budget per run, seconds (default 120; RQ, which forks per
                     job, gets 3,000 jobs and 20 s and reports the rate of the part
                     it drained)
  --task-queue PATH  the task-queue executable (default .venv/bin/task-queue); its
                     venv's python runs task-queue's producer (tq_bench.py)

Starts `redis-server --port <free> --save "" --appendonly no` (never the shared 6379)
and FLUSHALLs before each run. Each library, task-queue included, runs in a subprocess
(`<peer>_bench.py`, `tq_bench.py`; see _common.py for both modes):

- drain: the producer enqueues N jobs one call at a time (enqueue/s), THEN starts K
  worker processes of the library (K = each --workers count, each a separate worker
  command) and times the backlog's drain from the first completion (worker startup
  excluded) until all N have INCRed a counter. The producer is idle during the drain,
  so drain/s is the worker processes alone.
- latency: one worker process, warmed up; jobs are submitted at R/s for S s, each
  carrying time.time() from just before its enqueue call; each handler RPUSHes
  time.time() - submitted when it starts. p50/p90/p99/max of those delays.

Prints Markdown tables with task-queue's ratio to each peer. A peer that fails is
reported in its table, never fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS = ["celery", "rq", "dramatiq", "arq", "taskiq", "saq", "huey"]
US = "task-queue"
# RQ's default worker forks per job (~35 jobs/s on the 2-core VM): it drains a
# smaller backlog (jobs, seconds) and reports the rate of the part it got through.
DRAIN_CAP = {"rq": (3_000, 20.0)}
Result = dict[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(under: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free port, run `under` a command (valgrind, say)."""
    port = free_port()
    argv = [*under, "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(600):  # valgrind takes seconds to start it
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not start on port {port}")


def failed(peer: str, why: str) -> Result:
    return {"peer": peer, "version": "-", "notes": f"FAILED: {why}"}


def task_queue_binary(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    local = ROOT / ".venv" / "bin" / "task-queue"
    return str(local) if local.exists() else shutil.which("task-queue")


def run_one(peer: str, url: str, flags: list[str], budget: float, tq: str | None) -> Result:
    """Run `<peer>_bench.py` (task-queue: tq_bench.py in its own venv) and parse its line."""
    if peer == US:
        if tq is None:
            return failed(peer, "task-queue is not installed (make install the project venv)")
        python, script = str(Path(tq).absolute().parent / "python"), "tq_bench.py"
    else:
        python, script = sys.executable, f"{peer}_bench.py"
    argv = [python, str(HERE / script), *flags]
    env = {**os.environ, "PEER_REDIS_URL": url}
    try:
        done = subprocess.run(
            argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=budget
        )
    except subprocess.TimeoutExpired:
        return failed(peer, f"no result within {budget:.0f}s")
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return failed(peer, f"exit {done.returncode}: {tail}")
    result: Result = json.loads(lines[-1])
    return result


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    value = ours / theirs
    return f"{value:.2f}x" if 0.1 <= value < 100 else f"{value:.2g}x"


def by_peer(results: list[Result]) -> tuple[list[Result], Result | None]:
    peers = [r for r in results if r["peer"] != US]
    ours = next((r for r in results if r["peer"] == US), None)
    return peers, ours


def drain_table(results: list[Result], workers: int, tasks: int) -> str:
    peers, ours = by_peer(results)
    our_enq = ours.get("enqueue_per_second") if ours else None
    our_drn = ours.get("drain_per_second") if ours else None
    rows = [
        f"{tasks:,} no-op jobs, {workers} worker process{'es' if workers > 1 else ''} "
        "each, one redis-server.\n",
        "| peer | version | enqueue/s | drain/s | task-queue enqueue ratio "
        "| task-queue drain ratio | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in [*peers, *([ours] if ours else [])]:
        enq, drn = r.get("enqueue_per_second"), r.get("drain_per_second")
        is_us = r is ours
        rows.append(
            f"| {r['peer']} | {r['version']} | {fmt(enq)} | {fmt(drn)} "
            f"| {'' if is_us else ratio(our_enq, enq)} "
            f"| {'' if is_us else ratio(our_drn, drn)} | {r['notes']} |"
        )
    measured = [r for r in peers if r.get("drain_per_second")]
    if measured:
        best = max(measured, key=lambda r: r["drain_per_second"])
        rows.append(
            f"\nFastest peer drain ({workers} process{'es' if workers > 1 else ''}): "
            f"{best['peer']} {fmt(best['drain_per_second'])}/s; task-queue "
            f"{fmt(our_drn)}/s, ratio {ratio(our_drn, best['drain_per_second'])} "
            "(issue #4 asks >= 2x)."
        )
    return "\n".join(rows)


def scaling_table(drains: dict[int, list[Result]]) -> str:
    counts = sorted(drains)
    base = counts[0]
    head = " | ".join(f"drain/s, {k} proc" for k in counts)
    scal = " | ".join(f"{k} vs {base}" for k in counts[1:])
    rows = [
        f"| peer | {head} | {scal} |",
        "|---|" + "---:|" * (len(counts) + len(counts) - 1),
    ]
    names = [r["peer"] for r in drains[base]]
    for name in names:
        rates = [
            next((r.get("drain_per_second") for r in drains[k] if r["peer"] == name), None)
            for k in counts
        ]
        cells = " | ".join(fmt(v) for v in rates)
        ratios = " | ".join(ratio(v, rates[0]) for v in rates[1:])
        rows.append(f"| {name} | {cells} | {ratios} |")
    return "\n".join(rows)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def lowest_p99(peers: list[Result]) -> Result | None:
    """The peer with the lowest p99 among those that started every job."""
    measured = [r for r in peers if r.get("p99_ms") and r.get("started") == r.get("submitted")]
    return min(measured, key=lambda r: r["p99_ms"]) if measured else None


def latency_table(results: list[Result], rate: float, seconds: float) -> str:
    peers, ours = by_peer(results)
    our_p99 = ours.get("p99_ms") if ours else None
    rows = [
        f"Submit-to-start latency, {rate:g} jobs/s for {seconds:g} s "
        f"({int(rate * seconds):,} jobs), one worker process each, same redis-server.\n",
        "| peer | version | started | p50 ms | p90 ms | p99 ms | max ms "
        "| task-queue p99 / peer p99 | configuration |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in [*peers, *([ours] if ours else [])]:
        is_us = r is ours
        started = f"{r['started']}/{r['submitted']}" if "started" in r else "-"
        rows.append(
            f"| {r['peer']} | {r['version']} | {started} | {ms(r.get('p50_ms'))} "
            f"| {ms(r.get('p90_ms'))} | {ms(r.get('p99_ms'))} | {ms(r.get('max_ms'))} "
            f"| {'' if is_us else ratio(our_p99, r.get('p99_ms'))} | {r['notes']} |"
        )
    best = lowest_p99(peers)
    if best:
        verdict = "-" if our_p99 is None else ("yes" if our_p99 <= best["p99_ms"] else "NO")
        rows.append(
            f"\nBest peer p99: {best['peer']} {ms(best['p99_ms'])} ms; task-queue p99 "
            f"{ms(our_p99)} ms, ratio {ratio(our_p99, best['p99_ms'])} "
            f"(issue asks no worse than the best peer: {verdict})."
        )
    return "\n".join(rows)


def percentiles(delays_ms: list[float]) -> dict[str, Any]:
    """How many delays, and their p50/p90/p99/max, in milliseconds."""
    delays = sorted(delays_ms)
    return {
        "started": len(delays),
        "p50_ms": round(delays[len(delays) // 2], 2),
        "p90_ms": round(delays[max(0, int(len(delays) * 0.90) - 1)], 2),
        "p99_ms": round(delays[max(0, int(len(delays) * 0.99) - 1)], 2),
        "max_ms": round(delays[-1], 2),
    }


def with_percentiles(result: Result) -> Result:
    samples = result.get("samples_ms")
    return {**result, **percentiles(samples)} if samples else result


def pooled(rounds: list[list[Result]], order: list[str]) -> list[Result]:
    """Each peer's rounds as one result: its delays pooled, its jobs summed."""
    merged = []
    for peer in order:
        results = [r for results in rounds for r in results if r["peer"] == peer]
        samples = [delay for r in results for delay in r.get("samples_ms", [])]
        if not samples:
            merged.append(results[0])
            continue
        errors = dict.fromkeys(r["error"] for r in results if r.get("error"))
        merged.append(
            {
                **results[0],
                "submitted": sum(r.get("submitted", 0) for r in results),
                **percentiles(samples),
                "error": "; ".join(errors),
            }
        )
    return merged


def best_ratio(results: list[Result]) -> str:
    """One round's task-queue p99 over its best peer's, as `0.93x (huey)`."""
    peers, ours = by_peer(results)
    best = lowest_p99(peers)
    if not best or not ours or not ours.get("p99_ms"):
        return "-"
    return f"{ratio(ours['p99_ms'], best['p99_ms'])} ({best['peer']})"


def parse_args() -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", default="1", help="drain: worker-process counts, e.g. 1,2")
    parser.add_argument("--latency", action="store_true", help="also measure latency")
    parser.add_argument("--rate", type=float, default=200.0, help="latency: submits per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency: seconds of submits")
    parser.add_argument("--rounds", type=int, default=1, help="latency: turns, pooled")
    parser.add_argument("--no-drain", action="store_true", help="skip the drain part")
    parser.add_argument("--only", default=",".join([*PEERS, US]), help="comma-separated")
    parser.add_argument("--timeout", type=float, default=120.0, help="drain budget per run, s")
    parser.add_argument("--task-queue", help="task-queue executable (default: .venv/bin)")
    args = parser.parse_args()
    args.chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.chosen) - {*PEERS, US}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    try:
        args.counts = sorted({int(k) for k in args.workers.split(",") if k.strip()})
    except ValueError:
        parser.error("--workers takes comma-separated integers, e.g. 1,2")
    if not args.counts or min(args.counts) < 1:
        parser.error("--workers needs counts >= 1")
    if args.rounds < 1:
        parser.error("--rounds needs at least 1")
    return args


def main() -> None:
    args = parse_args()
    tq = task_queue_binary(args.task_queue)
    # Peers first, task-queue last, as before.
    order = [p for p in [*PEERS, US] if p in args.chosen]
    server, url = start_redis()
    client = redis.Redis.from_url(url)
    drains: dict[int, list[Result]] = {}
    rounds: list[list[Result]] = []
    began = time.perf_counter()

    def run(peer: str, what: str, flags: list[str], budget: float) -> Result:
        client.flushall()
        print(f"running {peer} {what} ...", file=sys.stderr, flush=True)
        result = run_one(peer, url, flags, budget, tq)
        shown = {k: v for k, v in with_percentiles(result).items() if k != "samples_ms"}
        print(json.dumps(shown), file=sys.stderr, flush=True)
        return result

    try:
        if not args.no_drain:
            for k in args.counts:
                drains[k] = []
                for p in order:
                    tasks, timeout = DRAIN_CAP.get(p, (args.tasks, args.timeout))
                    tasks, timeout = min(tasks, args.tasks), min(timeout, args.timeout)
                    flags = ["--tasks", str(tasks), "--timeout", str(timeout)]
                    flags += ["--workers", str(k)]
                    what = f"drain, {k} worker process(es)"
                    drains[k].append(run(p, what, flags, timeout + 180))
        if args.latency:
            flags = ["--latency", "--rate", str(args.rate), "--seconds", str(args.seconds)]
            for turn in range(args.rounds):
                what = f"latency at {args.rate:g}/s, round {turn + 1} of {args.rounds}"
                peers = order if turn % 2 == 0 else order[::-1]
                rounds.append([run(p, what, flags, args.seconds + 180) for p in peers])
    finally:
        server.terminate()
        server.wait()

    print(f"\nTotal {time.perf_counter() - began:.0f} s.")
    for k in args.counts if drains else []:
        print()
        print(drain_table(drains[k], k, args.tasks))
    if len(drains) > 1:
        print("\nDrain scaling with worker processes (same runs as above):\n")
        print(scaling_table(drains))
    if drains:
        print(
            "\nProducer: one sequential enqueue call per job (task-queue: AsyncClient.submit), "
            "all N enqueued before the workers start; drain/s counts from the first completion."
        )
    if rounds:
        print()
        print(latency_table(pooled(rounds, order), args.rate, args.seconds * len(rounds)))
        if len(rounds) > 1:
            by_round = ", ".join(
                best_ratio([with_percentiles(r) for r in results]) for results in rounds
            )
            print(
                f"\n{len(rounds)} rounds pooled; task-queue p99 / best peer p99, "
                f"round by round: {by_round}."
            )


if __name__ == "__main__":
    main()
