"""serve_overhead: what the HTTP path costs — epd.serve measured by epd.bench.serve against epd.run,
on the same workload, configuration and machine.

    python experiments/serve_overhead/run.py --out OUT                                  # tiny model, CPU
    python experiments/serve_overhead/run.py --out OUT -- +topology=2e1p transfer=shm   # overrides for both
    python experiments/serve_overhead/run.py --out OUT --latency-requests 64 --throughput-requests 512 -- \\
        +topology=1e1p_2gpu model=qwen2_5_vl model.random_init=true device=cuda         # on a GPU machine

Two workloads (synthetic images, ``workload.*`` as epd.run's; more with ``--workload key=value``):

- latency: one request in flight (``arrival=concurrency``, ``concurrency=1``): p50 TTFT and TPOT of
  epd.run (frontend clock) and of epd.bench.serve against epd.serve (client clock); their difference
  is the HTTP path's added latency (body, JSON, SSE, the openai SDK, the hop between the server's
  thread and the frontend's);
- throughput: every request at once (``request_rate=inf``): request and output-token throughput,
  the served one as a ratio to epd.run's.

epd.run runs as two jobs; epd.serve starts once and takes both workloads. Overrides after ``--`` go
to epd.run and epd.serve; those of ``model`` also to the bench (its tokenizer). OUT gets each run's
results.json (``run-latency/``, ``serve-latency/`` ...), summary.json and report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "serve_overhead" / "results" / time.strftime("%Y-%m-%d_%H-%M"))  # fmt: skip
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "epd-serve-overhead")
    p.add_argument("--latency-requests", type=int, default=32)
    p.add_argument("--throughput-requests", type=int, default=128)
    p.add_argument("--warmup-requests", type=int, default=8)
    p.add_argument("--workload", nargs="*", default=["workload.output_len=32", "workload.input_len=64"])
    p.add_argument(
        "--media",
        choices=("path", "inline"),
        default="path",
        help="path: the server reads the bench's media files, as epd.run reads its own (the HTTP path alone); "
        "inline: data: URIs in the bodies (+ their encoding, transport and decoding)",
    )
    return p.parse_args(argv), overrides


def workloads(args) -> dict[str, list[str]]:
    common = ["workload=random_image", f"workload.warmup_requests={args.warmup_requests}", *args.workload]
    return {
        "latency": [
            *common,
            f"workload.num_requests={args.latency_requests}",
            "workload.arrival=concurrency",
            "workload.concurrency=1",
        ],  # fmt: skip
        "throughput": [*common, f"workload.num_requests={args.throughput_requests}", "workload.request_rate=inf"],
    }


def run(cmd: list[str], log: Path, timeout: float = 3600) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")


def start_server(run_dir: Path, overrides: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    cmd = [
        sys.executable,
        "-m",
        "epd.serve",
        "server.port=0",
        "logger.quiet=true",
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    log = (run_dir.parent / "serve.out").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 1800
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"epd.serve ended ({proc.returncode}); see {run_dir.parent / 'serve.out'}")
        if (run_dir / "server.json").exists():
            url = json.loads((run_dir / "server.json").read_text())["url"]
            try:
                if httpx.get(url.removesuffix("/v1") + "/health", timeout=5).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("epd.serve did not get ready in 30 minutes")


def figures(path: Path) -> dict:
    s = json.loads(path.read_text())["summary"]
    return {
        "ttft_p50_ms": s["ttft_ms"]["p50"],
        "tpot_p50_ms": s["tpot_ms"]["p50"],
        "e2e_p50_ms": s["e2e_ms"]["p50"],
        "request_throughput": s["request_throughput"],
        "output_token_throughput": s["output_token_throughput"],
        "num_failed": s["num_failed"],
    }


def paired(bench_dir: Path, server_dir: Path) -> dict:
    """The HTTP path per request, with one request in flight: the client's TTFT (send → first event) minus the
    server's own (its handler's start → the frontend's first token) for the same request, and so for E2E."""
    import json as _json

    import numpy as np

    def records(path: Path) -> list[dict]:
        rows = (_json.loads(line) for line in path.read_text().splitlines() if line.strip())
        return sorted(rows, key=lambda r: r["arrival"])

    client = records(bench_dir / "records.jsonl")  # warm-up requests too: the server saw them first
    server = records(server_dir / "records.jsonl")[: len(client)]  # the latency workload ran first
    pairs = [(c, s) for c, s in zip(client, server, strict=True) if c["error"] is None and s["error"] is None]
    pairs = [(c, s) for c, s in pairs if not c["warmup"]]
    assert all(c["output_token_ids"] == s["output_token_ids"] for c, s in pairs), "requests paired wrongly"
    added = {key: [c[f"{key}_ms"] - s[f"{key}_ms"] for c, s in pairs] for key in ("ttft", "e2e")}
    return {f"added_{key}_p50_ms": float(np.median(values)) for key, values in added.items()} | {"pairs": len(pairs)}


def report(table: dict) -> str:
    lat, thr = table["latency"], table["throughput"]
    rows = [
        "| figure | epd.run | epd.serve + epd.bench.serve | served − run / ratio |",
        "|---|---|---|---|",
        f"| HTTP path per request, one in flight: client TTFT − server TTFT, p50 (ms) | | | +{lat['paired']['added_ttft_p50_ms']:.2f} ms |",  # fmt: skip
        f"| ... client E2E − server E2E, p50 (ms) | | | +{lat['paired']['added_e2e_p50_ms']:.2f} ms |",
        f"| TTFT p50, one in flight (ms) | {lat['run']['ttft_p50_ms']:.2f} | {lat['serve']['ttft_p50_ms']:.2f} | +{lat['serve']['ttft_p50_ms'] - lat['run']['ttft_p50_ms']:.2f} ms |",  # fmt: skip
        f"| TPOT p50, one in flight (ms) | {lat['run']['tpot_p50_ms']:.2f} | {lat['serve']['tpot_p50_ms']:.2f} | {lat['serve']['tpot_p50_ms'] - lat['run']['tpot_p50_ms']:+.2f} ms |",  # fmt: skip
        f"| request throughput, all at once (req/s) | {thr['run']['request_throughput']:.2f} | {thr['serve']['request_throughput']:.2f} | {thr['serve']['request_throughput'] / thr['run']['request_throughput']:.3f} |",  # fmt: skip
        f"| output tokens/s, all at once | {thr['run']['output_token_throughput']:.1f} | {thr['serve']['output_token_throughput']:.1f} | {thr['serve']['output_token_throughput'] / thr['run']['output_token_throughput']:.3f} |",  # fmt: skip
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse_args(argv)
    work = args.work_dir / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model_overrides = [o for o in overrides if o.lstrip("+").startswith("model")]
    table: dict = {}
    for name, wl in workloads(args).items():  # epd.run: one job per workload
        run([sys.executable, "-m", "epd.run", "logger.quiet=true", *overrides, *wl, f"hydra.run.dir={work / f'run-{name}'}"], work / f"run-{name}.out")  # fmt: skip
        table[name] = {"run": figures(work / f"run-{name}" / "results.json")}
    server, url = start_server(work / "serve", [*overrides, f'media.allowed_dirs=["{work}"]'])
    try:
        for name, wl in workloads(args).items():
            bench = [sys.executable, "-m", "epd.bench.serve", f"endpoint.url={url}", f"endpoint.media={args.media}"]
            bench += ["logger.quiet=true", *model_overrides, *wl]
            run([*bench, f"hydra.run.dir={work / f'serve-{name}'}"], work / f"serve-{name}.out")
            table[name]["serve"] = figures(work / f"serve-{name}" / "results.json")
            if name == "latency":
                table[name]["paired"] = paired(work / f"serve-{name}", work / "serve")
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=300)
    for sub in ("run-latency", "run-throughput", "serve-latency", "serve-throughput"):
        (args.out / sub).mkdir(exist_ok=True)
        shutil.copy2(work / sub / "results.json", args.out / sub / "results.json")
    table["overrides"], table["media"] = overrides, args.media
    (args.out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "report.md").write_text(report(table))
    print(report(table), end="")


if __name__ == "__main__":
    main()
