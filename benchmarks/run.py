#!/usr/bin/env python3
"""Benchmarks: the product against its physical limits and a baseline.

One run, variants interleaved round by round (the machine is shared and noisy, so
the ratios measured side by side are the result, not the absolute times):

  serving  1. limit:    bare ONNX Runtime forward inside the running serving container,
                        with the server's own session settings (benchmarks/forward.py)
           2. product:  /invocations end to end with a real JPEG: p50/p99 at concurrency
                        1, throughput at concurrency 4 and 16
           3. baseline: the toolkit's default handler + a source-project-style
                        inference.py (benchmarks/baseline/), same base and MMS
           4. cold start (docker run -> first 200) and image sizes
  runtimes eager / TorchScript / torch.export / torch.compile (training image) against
           ONNX Runtime (serving image), same threads, same weights
  training the training loop on JPEGs through dogbreed_train.data against pre-decoded
           tensors (benchmarks/training.py; CPU here)

Writes OUT/results.json and OUT/results.md (default OUT: bench-output/).
Needs dogbreed-train and dogbreed-serve images (`make images`); builds the baseline
image (dogbreed-baseline:bench) through docker/harness/build.sh when it is missing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The benchmarks' own modules sit beside this file, on sys.path as the script's folder.
import results_md
from photo import request_image

from dogbreed_contract import model_card
from serving import (
    Container,
    Probe,
    check_answer,
    docker,
    image_size_bytes,
    load,
    one_request,
    percentile,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

GOALS = {
    "latency_ratio_max": 1.15,      # e2e p50 @c1 / bare batch-1 forward p50
    "throughput_ratio_min": 0.8,    # e2e rps @c>=4 / best batched forward img/s
    "cold_start_max_s": 10.0,
    "serve_image_max_gb": 1.5,
    "train_image_max_gb": 7.0,
    "train_real_vs_synthetic_min_gpu": 0.9,
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def results_of(stdout: str) -> list[dict]:
    return [json.loads(line[len("RESULT "):]) for line in stdout.splitlines()
            if line.startswith("RESULT ")]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in
                Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    return {"hostname": platform.node(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_mb": mem, "kernel": platform.release(),
            "docker": docker("version", "-f", "{{.Server.Version}}", check=False).stdout.strip(),
            "gpu": gpu_name(), "load_avg_start": os.getloadavg()}


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def ensure_model(args, work: Path) -> Path:
    """ONNX + model.json (and a state_dict) written by the training image's own code."""
    out = work / f"{args.model}-{args.image_size}"
    if not (out / "model" / model_card.FILE).is_file() or not (out / "model-torch" / "model.pth").is_file():
        log(f"exporting {args.model} at {args.image_size} px with {args.train_image}")
        out.mkdir(parents=True, exist_ok=True)
        docker("run", "--rm", "--network", "none", "-v", f"{HERE}:/bench:ro",
               "-v", f"{out}:/out", args.train_image, "python", "/bench/export_model.py",
               "--model", args.model, "--image-size", str(args.image_size), "--out", "/out",
               timeout=1200)
    return out


def ensure_baseline(image: str) -> None:
    if docker("image", "inspect", image, check=False).returncode == 0:
        return
    log(f"building {image} (benchmarks/baseline/Dockerfile)")
    subprocess.run([str(ROOT / "docker/harness/build.sh"), "benchmarks/baseline/Dockerfile",
                    image, "benchmarks/baseline/requirements.lock"], check=True, cwd=ROOT)


def median_of(rows: list[dict], *path: str) -> float | None:
    vals = []
    for row in rows:
        for key in path:
            row = row.get(key) if isinstance(row, dict) else None
        if isinstance(row, (int, float)):
            vals.append(float(row))
    return statistics.median(vals) if vals else None


def bench_runtimes(args, model_root: Path) -> dict:
    """Bare forward of each runtime, alternating images round by round, same threads."""
    common = ["--model-dir", "/m/model", "--batches", args.batches,
              "--seconds", str(args.forward_seconds), "--latency-iters", str(args.latency_iters)]
    mounts = ["-v", f"{HERE}:/bench:ro", "-v", f"{model_root}:/m:ro"]
    rows: dict[str, list[dict]] = {}
    threads = args.threads
    for rnd in range(args.rounds):
        log(f"runtimes round {rnd + 1}/{args.rounds}")
        out = docker("run", "--rm", "--network", "none", *mounts, args.serve_image,
                     "python", "/bench/forward.py", "--runtimes", "ort",
                     "--threads", str(threads), *common, timeout=1200).stdout
        for res in results_of(out):
            rows.setdefault(res["runtime"], []).append(res)
            threads = threads or res.get("threads", 0)
        out = docker("run", "--rm", "--network", "none", *mounts, "-e", "PYTHONPATH=/opt/program",
                     args.train_image, "python", "/bench/forward.py",
                     "--runtimes", args.torch_runtimes, "--threads", str(threads or 2), *common,
                     timeout=1800).stdout
        for res in results_of(out):
            rows.setdefault(res["runtime"], []).append(res)
    summary = {}
    for name, rs in rows.items():
        errors = [r["error"] for r in rs if "error" in r]
        summary[name] = {
            "threads": rs[0].get("threads"),
            "latency_b1_ms": median_of(rs, "latency_ms", "p50"),
            "best_throughput": median_of(rs, "best_throughput"),
            "throughput_by_batch": {b: median_of([r.get("throughput", {}) for r in rs], b)
                                    for b in args.batches.split(",")},
            "error": errors[0] if errors else None, "rounds": rs}
    return summary


def startup_phases(logs: str) -> dict:
    """What serve itself logs about its start-up (server.py / handler.py)."""
    import re

    out = {}
    for key, pattern in (("model_load_and_warmup_s", r"warmed up in ([\d.]+) s"),
                         ("serve_ready_s", r"ready on port \d+ after ([\d.]+) s")):
        m = re.search(pattern, logs)
        if m:
            out[key] = float(m.group(1))
    return out


def bench_serving(args, model_root: Path, body: bytes) -> dict:
    """Per round: cold starts, then the bare forward (a probe process inside the product
    container) interleaved call by call / window by window with the HTTP load."""
    request = args.out / "work" / "request.jpg"
    request.write_bytes(body)
    variants = {"product": (args.serve_image, model_root / "model", dict(args.serve_env))}
    if not args.skip_baseline:
        variants["baseline"] = (args.baseline_image, model_root / "model-torch", {})
    rounds: list[dict] = []
    for rnd in range(args.rounds):
        log(f"serving round {rnd + 1}/{args.rounds}")
        conts: dict[str, Container] = {}
        probe = None
        row: dict = {"cold_start_s": {}, "c1": {}, "load": {}}
        try:
            for name, (image, mdir, env) in variants.items():
                c = Container(image, mdir, env=env, extra=args.docker_run_args,
                              mounts={HERE: "/bench", request: "/bench-request.jpg"})
                conts[name] = c
                row["cold_start_s"][name] = c.start(body)
                log(f"  {name}: first prediction {row['cold_start_s'][name]:.1f} s after docker run")
                if name == "product":
                    row["product_startup_log"] = startup_phases(c.logs())
            row["answers_agree"] = (
                [p["index"] for p in check_answer(conts["product"].port, body)["predictions"]]
                == [p["index"] for p in check_answer(conts["baseline"].port, body)["predictions"]]
                if "baseline" in conts else None)
            # 1. the limit: ONNX Runtime as the server builds it, in the product container
            # (its environment, its cgroup), in a process of its own while the server idles.
            probe = Probe(conts["product"], "/opt/ml/model", "/bench-request.jpg")
            row["probe"] = probe.info
            sweep = {b: probe.ask(f"tp {b} {args.forward_seconds}")["ips"]
                     for b in (int(x) for x in args.batches.split(","))}
            best = max(sweep, key=sweep.get)
            row["forward_sweep_ips"] = {str(b): v for b, v in sweep.items()}
            row["forward_best_batch"] = best
            # 2./3. concurrency 1: forward, decode, product request, baseline request, ...
            conns: dict = {}
            for c in conts.values():
                for _ in range(2):
                    one_request(c.port, body, conns)
            samples: dict[str, list] = {"forward": [], "decode": [],
                                        **{name: [] for name in conts}}
            for _ in range(args.requests):
                samples["forward"].append(probe.ask("lat 1")["ms"])
                samples["decode"].append(probe.ask("dec")["ms"])
                for name, c in conts.items():
                    samples[name].append(one_request(c.port, body, conns))
            for conn in conns.values():
                conn.close()
            for name, vals in samples.items():
                ok = [v for v in vals if v is not None]
                row["c1"][name] = {"p50_ms": statistics.median(ok) if ok else None,
                                   "p99_ms": percentile(ok, 99) if ok else None,
                                   "n": len(ok), "errors": len(vals) - len(ok)}
            log("  c=1 p50: " + ", ".join(f"{k} {v['p50_ms']:.1f} ms" for k, v in row["c1"].items()
                                          if v["p50_ms"] is not None))
            # concurrency >= 4: windows of forward throughput (best batch), product, baseline
            windows = max(1, round(args.seconds / args.window))
            for conc in args.concurrency:
                fwd, per = [], {name: [] for name in conts}
                for w in range(windows):
                    fwd.append(probe.ask(f"tp {best} {args.forward_seconds}")["ips"])
                    for name, c in conts.items():
                        per[name].append(load(c.port, body, conc, seconds=args.window,
                                              warmup=1 if w == 0 else 0))
                row["load"][str(conc)] = {"forward_ips": fwd}
                for name, parts in per.items():
                    n = sum(p["requests"] for p in parts)
                    secs = sum(p["seconds"] for p in parts)
                    lat = [p["p50_ms"] for p in parts if p["p50_ms"] is not None]
                    row["load"][str(conc)][name] = {
                        "throughput_rps": n / secs if secs else 0.0, "requests": n,
                        "errors": sum(p["errors"] for p in parts),
                        "p50_ms": statistics.median(lat) if lat else None,
                        "p99_ms": max((p["p99_ms"] for p in parts if p["p99_ms"]), default=None),
                        "windows": parts}
                log(f"  c={conc}: forward {statistics.median(fwd):.2f} img/s (batch {best}); " +
                    ", ".join(f"{name} {row['load'][str(conc)][name]['throughput_rps']:.2f} req/s"
                              for name in conts))
        finally:
            if probe:
                probe.close()
            for c in conts.values():
                c.stop()
        rounds.append(row)
    return {"rounds": rounds, "variants": {k: {"image": v[0], "env": v[2]}
                                           for k, v in variants.items()}}


def bench_training(args) -> dict:
    log("training loop: real JPEG data path vs pre-decoded tensors (CPU)")
    cmd = ["run", "--rm", "--network", "none", "--shm-size", "1g", "-v", f"{HERE}:/bench:ro",
           args.train_image, "python", "/bench/training.py", "--device", "cpu",
           "--model", args.train_model, "--image-size", str(args.train_image_size),
           "--batch-size", str(args.train_batch), "--steps", str(args.train_steps),
           "--warmup", str(max(1, args.train_steps // 4)), "--rounds", str(args.rounds)]
    out = docker(*cmd, timeout=3600).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarize(res: dict) -> dict:
    """Medians over rounds of the per-round ratios, and each goal met or not."""
    s: dict = {}
    srv = res.get("serving")
    if srv:
        rounds = srv["rounds"]
        names = list(srv["variants"])
        concs = list(rounds[0]["load"])

        def per_round(fn):
            vals = [fn(r) for r in rounds]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        s["forward_b1_ms"] = per_round(lambda r: r["c1"]["forward"]["p50_ms"])
        s["decode_ms"] = per_round(lambda r: r["c1"]["decode"]["p50_ms"])
        s["forward_best_batch"] = rounds[-1]["forward_best_batch"]
        s["forward_sweep_ips"] = {b: per_round(lambda r: r["forward_sweep_ips"][b])
                                  for b in rounds[0]["forward_sweep_ips"]}
        s["forward_best_ips"] = per_round(lambda r: statistics.median(
            [x for c in r["load"].values() for x in c["forward_ips"]]))
        for name in names:
            s[f"{name}_c1_p50_ms"] = per_round(lambda r: r["c1"][name]["p50_ms"])
            s[f"{name}_c1_p99_ms"] = per_round(lambda r: r["c1"][name]["p99_ms"])
            s[f"{name}_errors"] = sum(r["c1"][name]["errors"] + sum(
                r["load"][c][name]["errors"] for c in concs) for r in rounds)
            s[f"{name}_cold_start_s"] = per_round(lambda r: r["cold_start_s"][name])
            for conc in concs:
                s[f"{name}_c{conc}_rps"] = per_round(lambda r: r["load"][conc][name]["throughput_rps"])
                s[f"{name}_c{conc}_p50_ms"] = per_round(lambda r: r["load"][conc][name]["p50_ms"])
        s["product_serve_ready_s"] = per_round(
            lambda r: r.get("product_startup_log", {}).get("serve_ready_s"))
        s["product_model_load_s"] = per_round(
            lambda r: r.get("product_startup_log", {}).get("model_load_and_warmup_s"))
        s["latency_ratio"] = per_round(lambda r: r["c1"]["product"]["p50_ms"]
                                       / r["c1"]["forward"]["p50_ms"])
        s["latency_ratio_with_decode"] = per_round(
            lambda r: r["c1"]["product"]["p50_ms"]
            / (r["c1"]["forward"]["p50_ms"] + r["c1"]["decode"]["p50_ms"]))
        for conc in concs:
            s[f"throughput_ratio_c{conc}"] = per_round(
                lambda r: r["load"][conc]["product"]["throughput_rps"]
                / statistics.median(r["load"][conc]["forward_ips"]))
        if "baseline" in names:
            s["baseline_over_product_p50_c1"] = per_round(
                lambda r: r["c1"]["baseline"]["p50_ms"] / r["c1"]["product"]["p50_ms"])
            for conc in concs:
                s[f"product_over_baseline_rps_c{conc}"] = per_round(
                    lambda r: r["load"][conc]["product"]["throughput_rps"]
                    / r["load"][conc]["baseline"]["throughput_rps"])
            s["answers_agree"] = all(r.get("answers_agree") for r in rounds)
    goals = []
    if "latency_ratio" in s:
        goals.append({"goal": "e2e p50 @c1 within 1.15x of bare batch-1 forward",
                      "value": s["latency_ratio"], "target": "<= 1.15",
                      "met": s["latency_ratio"] <= GOALS["latency_ratio_max"]})
        for key in sorted(k for k in s if k.startswith("throughput_ratio_c")):
            conc = key.rsplit("c", 1)[1]
            goals.append({"goal": f"throughput @c{conc} at least 0.8x best batched forward "
                                  f"(batch {s['forward_best_batch']})",
                          "value": s[key], "target": ">= 0.8",
                          "met": s[key] >= GOALS["throughput_ratio_min"]})
        goals.append({"goal": f"cold start (docker run -> first prediction), {res['args']['model']} CPU",
                      "value": s["product_cold_start_s"], "target": "< 10 s",
                      "met": s["product_cold_start_s"] < GOALS["cold_start_max_s"]})
    sizes = res.get("image_sizes_bytes", {})
    for key, image, limit in (("serve", res["args"]["serve_image"], GOALS["serve_image_max_gb"]),
                              ("train", res["args"]["train_image"], GOALS["train_image_max_gb"])):
        if sizes.get(image):
            gb = sizes[image] / 1e9
            goals.append({"goal": f"{key} image size ({image})", "value": gb,
                          "target": f"< {limit} GB", "met": gb < limit})
    tr = res.get("training")
    if tr:
        goals.append({"goal": "training: real data path >= 0.9x synthetic on GPU (H100, "
                              "ResNet-50, AMP)", "value": None, "target": ">= 0.9",
                      "met": None, "note": "not measured: no GPU on this machine"})
    s["goals"] = goals
    return s


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="CI-sized smoke: 1 round, few requests, tiny training run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-output")
    ap.add_argument("--model", default="resnet50", help="serving backbone (default resnet50)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--image", type=Path, help="the JPEG to send (default: a real photo, "
                    "Debian darknet's dog.jpg, else a generated one)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians reported")
    ap.add_argument("--requests", type=int, default=40, help="sequential requests at concurrency 1")
    ap.add_argument("--seconds", type=float, default=20,
                    help="load time per concurrency >1 level and variant, split into windows")
    ap.add_argument("--window", type=float, default=5,
                    help="seconds per load window (forward and variants alternate by window)")
    ap.add_argument("--concurrency", default="4,16")
    ap.add_argument("--batches", default="1,2,4,8,16", help="batch sizes for the bare forward")
    ap.add_argument("--forward-seconds", type=float, default=3.0)
    ap.add_argument("--latency-iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for the runtime comparison (0: what the server uses)")
    ap.add_argument("--torch-runtimes", default="eager,torchscript,export,compile")
    ap.add_argument("--serve-image", default=os.environ.get("SERVE_IMAGE", "dogbreed-serve:latest"))
    ap.add_argument("--train-image", default=os.environ.get("TRAIN_IMAGE", "dogbreed-train:latest"))
    ap.add_argument("--baseline-image", default="dogbreed-baseline:bench")
    ap.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the product container (e.g. DOGBREED_MAX_BATCH=4)")
    ap.add_argument("--gpu", action="store_true",
                    help="GPU serving: dogbreed-serve:gpu (make serve-image-gpu) and the baseline "
                         "with `docker run --gpus all` (not run on a GPU so far)")
    ap.add_argument("--train-model", default="resnet18")
    ap.add_argument("--train-image-size", type=int, default=112)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--skip-serving", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-runtimes", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.seconds, args.window = 1, 8, 4, 4
        args.batches, args.forward_seconds, args.latency_iters = "1,4", 0.5, 5
        args.concurrency = "4"
        args.torch_runtimes = "eager,torchscript"
        args.train_model, args.train_image_size, args.train_batch, args.train_steps = \
            "resnet18", 64, 8, 3
    args.concurrency = [int(c) for c in str(args.concurrency).split(",")]
    args.docker_run_args = ["--gpus", "all"] if args.gpu else []
    if args.gpu and "--serve-image" not in " ".join(argv or sys.argv):
        args.serve_image = "dogbreed-serve:gpu"
    args.serve_env = [tuple(kv.split("=", 1)) for kv in args.serve_env]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    (args.out / "work").mkdir(parents=True, exist_ok=True)
    work = ROOT / ".cache" / "bench" / "models"  # exported once, shared by every run
    started = time.monotonic()
    res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": machine(),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    images = [args.serve_image, args.train_image]
    if not args.skip_serving and not args.skip_baseline:
        ensure_baseline(args.baseline_image)
        images.append(args.baseline_image)
    res["image_sizes_bytes"] = {img: image_size_bytes(img) for img in images}
    missing = [img for img in images if res["image_sizes_bytes"][img] is None]
    for img in ("dogbreed-serve:latest", "dogbreed-train:latest"):  # the shipped tags too
        if img not in images and image_size_bytes(img):
            res["image_sizes_bytes"][img] = image_size_bytes(img)
    if missing:
        log(f"missing images: {missing} (run `make images`)")
        return 2
    model_root = ensure_model(args, work)
    body, what = request_image(args.image, ROOT / ".cache" / "bench")
    res["request_image"] = {"source": what, "bytes": len(body)}
    if not args.skip_runtimes:
        res["runtimes"] = bench_runtimes(args, model_root)
    if not args.skip_serving:
        res["serving"] = bench_serving(args, model_root, body)
    if not args.skip_training:
        res["training"] = bench_training(args)
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["wall_s"] = round(time.monotonic() - started, 1)
    res["summary"] = summarize(res)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    md = results_md.markdown(res)
    (args.out / "results.md").write_text(md)
    print(md)
    log(f"wrote {args.out}/results.json and results.md in {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
