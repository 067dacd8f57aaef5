#!/usr/bin/env python3
"""Compare serving configurations side by side (how settings.py's defaults were chosen).

    .venv/bin/python benchmarks/serving_configs.py --config base: \
        --config delay1:DOGBREED_MAX_BATCH_DELAY_MS=1 \
        --config w2t1:SAGEMAKER_MODEL_SERVER_WORKERS=2
    .venv/bin/python benchmarks/serving_configs.py --config old@dogbreed-serve:latest: \
        --config new@dogbreed-serve:dev: --cold-starts 5      # two images

Every configuration runs in its own product container at the same time (idle while
the others are measured). Each round: at concurrency 1, one bare forward (a probe in
the first container) then one request to each configuration, repeated; then for each
concurrency and configuration a bare-forward throughput window (batch 1) right before
that configuration's load window. Prints medians over rounds of the ratios.
With --cold-starts N, each configuration is first started N more times, alternating
between configurations, and the median cold start (docker run -> first 200) is shown.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

# The benchmarks' own modules sit beside this file, on sys.path as the script's folder.
from photo import request_image

from serving import Container, Probe, load, one_request

HERE = Path(__file__).resolve().parent

# NAME[@IMAGE[:TAG]]:ENV -- a tag has no '=' or ',', which tells it from the environment.
CONFIG = re.compile(r"^(?P<name>[^@:]+)(@(?P<image>[^:]+(:[^:=,]+)?))?:(?P<env>.*)$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True,
                    help="NAME[@IMAGE]:KEY=VALUE,KEY=VALUE (empty after the colon: "
                         "defaults; IMAGE defaults to --image)")
    ap.add_argument("--mount", action="append", default=[],
                    help="NAME:HOSTFILE=CONTAINERFILE extra read-only mount for one config")
    ap.add_argument("--image", default="dogbreed-serve:latest")
    ap.add_argument("--model-dir", type=Path, default=HERE.parent / "bench-output/work/resnet50-224/model")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--window", type=float, default=4)
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--cold-starts", type=int, default=0,
                    help="extra fresh starts per configuration, alternated")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    body, _ = request_image(None, HERE.parent / ".cache" / "bench")
    concs = [int(c) for c in args.concurrency.split(",")]
    configs, images = {}, {}
    for spec in args.config:
        m = CONFIG.match(spec)
        if not m:
            ap.error(f"--config {spec!r}: expected NAME[@IMAGE[:TAG]]:KEY=VALUE,...")
        name, env = m["name"], m["env"]
        configs[name] = dict(kv.split("=", 1) for kv in env.split(",") if kv)
        images[name] = m["image"] or args.image
    mounts: dict[str, dict] = {name: {HERE: "/bench"} for name in configs}
    for spec in args.mount:
        name, _, pair = spec.partition(":")
        host, inside = pair.split("=", 1)
        mounts[name][Path(host).resolve()] = inside
    conts: dict[str, Container] = {}
    rows: dict[str, dict[str, list]] = {n: {} for n in [*configs, "forward"]}
    probe = None
    colds: dict[str, list] = {name: [] for name in configs}
    try:
        for _ in range(args.cold_starts):
            for name, env in configs.items():
                c = Container(images[name], args.model_dir, env=env, mounts=mounts[name])
                try:
                    colds[name].append(c.start(body))
                finally:
                    c.stop()
        for name, env in configs.items():
            conts[name] = Container(images[name], args.model_dir, env=env, mounts=mounts[name])
            colds[name].append(conts[name].start(body))
            print(f"{name}: cold starts {[round(s, 1) for s in colds[name]]} s", file=sys.stderr)
        probe = Probe(next(iter(conts.values())), "/opt/ml/model", None)
        conns: dict = {}
        for c in conts.values():
            one_request(c.port, body, conns)
        for rnd in range(args.rounds):
            # concurrency 1: forward, then one request per config, repeated (paired in time)
            lat: dict[str, list] = {n: [] for n in rows}
            for _ in range(args.requests):
                lat["forward"].append(probe.ask("lat 1")["ms"])
                for name, c in conts.items():
                    lat[name].append(one_request(c.port, body, conns))
            rows["forward"].setdefault("b1_ms", []).append(statistics.median(lat["forward"]))
            for name in conts:
                ms = statistics.median([v for v in lat[name] if v])
                rows[name].setdefault("c1_ms", []).append(ms)
                rows[name].setdefault("c1_ratio", []).append(ms / rows["forward"]["b1_ms"][-1])
            # throughput: a forward window right before each config's window
            for conc in concs:
                for name, c in conts.items():
                    fwd = probe.ask(f"tp 1 {args.window}")["ips"]
                    rows["forward"].setdefault("ips", []).append(fwd)
                    r = load(c.port, body, conc, seconds=args.window, warmup=0)
                    rows[name].setdefault(f"c{conc}_rps", []).append(r["throughput_rps"])
                    rows[name].setdefault(f"c{conc}_ratio", []).append(r["throughput_rps"] / fwd)
            print(f"round {rnd + 1}: " + json.dumps({n: {k: round(v[-1], 2) for k, v in r.items()}
                                                     for n, r in rows.items()}), file=sys.stderr)
    finally:
        if probe:
            probe.close()
        for c in conts.values():
            c.stop()
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rows.items()}
    fwd = med["forward"]
    print("medians over rounds; ratios are per round against the forward measured just before")
    print(f"{'config':12} {'cold s':>6} {'c1 p50 ms':>10} {'c1/fwd':>7} " +
          " ".join(f"{'c%d rps' % c:>8} {'/fwd':>5}" for c in concs))
    print(f"{'forward':12} {'':>6} {fwd['b1_ms']:10.1f} {'':>7} " +
          " ".join(f"{fwd['ips']:8.2f} {'':>5}" for _ in concs))
    for name in configs:
        m = med[name]
        print(f"{name:12} {statistics.median(colds[name]):6.1f} {m['c1_ms']:10.1f} "
              f"{m['c1_ratio']:7.2f} " +
              " ".join(f"{m[f'c{c}_rps']:8.2f} {m[f'c{c}_ratio']:5.2f}" for c in concs))
    if args.json:
        args.json.write_text(json.dumps({"configs": configs, "images": images, "rounds": rows,
                                         "median": med, "cold_starts": colds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
