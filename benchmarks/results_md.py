"""results.json -> results.md: the tables the README and docs/benchmarks.md show."""
from __future__ import annotations


def _f(value, fmt="{:.1f}", none="n/a") -> str:
    return none if value is None else fmt.format(value)


def markdown(res: dict) -> str:
    m, s, a = res["machine"], res.get("summary", {}), res["args"]
    lines = [f"# Benchmark results, {res['date']}", "",
             f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_mb']} MB RAM, "
             f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}; "
             f"Docker {m['docker']}. Shared machine (load average "
             f"{m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at end): "
             "read the ratios, measured side by side in the same run, not the absolute times. "
             f"Rounds: {a['rounds']} (medians of per-round values).", ""]
    sizes = res.get("image_sizes_bytes", {})
    if sizes:
        lines += ["Image sizes: " + ", ".join(f"`{k}` {v / 1e9:.2f} GB" for k, v in sizes.items()
                                              if v), ""]
    srv = res.get("serving")
    if srv:
        concs = a["concurrency"]
        device = (res["serving"]["rounds"][0].get("probe", {}).get("device") or "cpu").upper()
        lines += [f"## Serving: {a['model']} at {a['image_size']} px, {device}", "",
                  f"Request: {res['request_image']['source']}, "
                  f"{res['request_image']['bytes'] / 1024:.0f} KB. Model: random-init weights "
                  "(no pretrained weights can be downloaded here; speed does not depend on them): "
                  "the ONNX file dogbreed-train exports for the product, the same weights as a "
                  "state_dict for the baseline.", "",
                  "| what | p50 ms @c1 | p99 ms @c1 | " +
                  " | ".join(f"img/s @c{c}" for c in concs) + " | cold start s |",
                  "|---|---|---|" + "---|" * len(concs) + "---|",
                  f"| limit: bare ONNX Runtime forward in the serving container (batch 1; "
                  f"throughput at batch {s['forward_best_batch']}) | {_f(s['forward_b1_ms'])} | | " +
                  " | ".join(_f(s['forward_best_ips'], '{:.2f}') for _ in concs) + " | |",
                  f"| (JPEG decode + resize + normalize of the request, one core) | "
                  f"{_f(s['decode_ms'])} | |" + " |" * len(concs) + " |"]
        for name, label in (("product", "product: dogbreed-serve `/invocations`"),
                            ("baseline", "baseline: toolkit default handler + PIL/torchvision "
                                         "inference.py, eager torch")):
            if name not in srv["variants"]:
                continue
            lines.append(
                f"| {label} | {_f(s.get(f'{name}_c1_p50_ms'))} | {_f(s.get(f'{name}_c1_p99_ms'))} | "
                + " | ".join(_f(s.get(f'{name}_c{c}_rps'), '{:.2f}') for c in concs)
                + f" | {_f(s.get(f'{name}_cold_start_s'))} |")
        lines += ["", "Bare forward throughput by batch size (img/s): " + ", ".join(
            f"b{b} {_f(v, '{:.2f}')}" for b, v in s["forward_sweep_ips"].items()) + ".", ""]
        if "baseline_over_product_p50_c1" in s:
            lines += ["Product against baseline (same run, interleaved): p50 latency at c1 "
                      f"{_f(s['baseline_over_product_p50_c1'], '{:.2f}')}x lower; throughput " +
                      ", ".join(f"{_f(s.get(f'product_over_baseline_rps_c{c}'), '{:.2f}')}x at c{c}"
                                for c in concs) +
                      f". Same top-5 classes from both: {s.get('answers_agree')}. Errors: product "
                      f"{s.get('product_errors')}, baseline {s.get('baseline_errors')}.", ""]
        lines += [f"Cold start of the product: {_f(s.get('product_cold_start_s'))} s from "
                  "`docker run` to the first 200, of which `serve` logs "
                  f"{_f(s.get('product_serve_ready_s'))} s from its start to nginx ready "
                  f"(model load + warm-up in the worker {_f(s.get('product_model_load_s'), '{:.2f}')} s).",
                  "",
                  f"End-to-end p50 at c1 against bare forward + decode: "
                  f"{_f(s.get('latency_ratio_with_decode'), '{:.2f}')}x "
                  "(what nginx, MMS and the handler add on top of the two).", ""]
        env = srv["variants"]["product"]["env"]
        if env:
            lines += [f"Product container environment: {env}", ""]
    goals = s.get("goals", [])
    if goals:
        lines += ["## Goals", "", "| goal | measured | target | met |", "|---|---|---|---|"]
        for g in goals:
            met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
            val = _f(g["value"], "{:.2f}")
            lines.append(f"| {g['goal']} | {val} | {g['target']} | {met}"
                         f"{' (' + g['note'] + ')' if g.get('note') else ''} |")
        lines.append("")
    rt = res.get("runtimes")
    if rt:
        batches = a["batches"].split(",")
        lines += ["## Runtimes: bare forward, same weights, same threads", "",
                  "| runtime | threads | batch-1 p50 ms | " +
                  " | ".join(f"img/s @b{b}" for b in batches) + " | best img/s |",
                  "|---|---|---|" + "---|" * len(batches) + "---|"]
        for name, r in rt.items():
            if r.get("error") and r.get("latency_b1_ms") is None:
                lines.append(f"| {name} | | not available: {r['error'][:120]} |" +
                             " |" * (len(batches) + 1))
                continue
            lines.append(f"| {name} | {r['threads']} | {_f(r['latency_b1_ms'])} | " +
                         " | ".join(_f(r["throughput_by_batch"].get(b), "{:.2f}") for b in batches)
                         + f" | {_f(r['best_throughput'], '{:.2f}')} |")
        lines.append("")
    tr = res.get("training")
    if tr:
        lines += [f"## Training loop: {tr['model']} at {tr['image_size']} px, batch "
                  f"{tr['batch_size']}, {tr['device'].upper()}"
                  f"{' with AMP' if tr['amp'] else ''}", "",
                  f"JPEGs: {tr['jpeg']['count']} generated {tr['jpeg']['size']} photo-like files "
                  f"(mean {tr['jpeg']['mean_kb']} KB); {tr['cpus']} CPUs, DataLoader workers by "
                  f"default {tr['workers_default']}.", "",
                  "| data path | images/s | vs synthetic |", "|---|---|---|"]
        for name, ips in tr["images_per_s"].items():
            ratio = tr["ratio_vs_synthetic"].get(name)
            lines.append(f"| {name} | {ips:.2f} | {_f(ratio, '{:.2f}', '1.00')} |")
        lines += ["", "GPU (H100, ResNet-50, AMP): not measured, no GPU on this machine. Run "
                  "`PYTHONPATH=container_train python benchmarks/training.py --device cuda --amp "
                  "--model resnet50 --image-size 224 --batch-size 128 --steps 60 "
                  "--more-workers 8` there.", ""]
    return "\n".join(lines)
