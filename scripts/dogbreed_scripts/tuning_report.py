"""What a finished tuning job found: a table of trials, the best one as JSON, a plot.

Input is what the SageMaker API returns: DescribeHyperParameterTuningJob and the
TrainingJobSummaries of ListTrainingJobsForHyperParameterTuningJob.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def list_trials(sm_client, tuning_job: str) -> list[dict]:
    """Every training job the tuning job started (boto3, all pages)."""
    pages = sm_client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job")
    return [s for page in pages.paginate(HyperParameterTuningJobName=tuning_job)
            for s in page["TrainingJobSummaries"]]


def objective_of(description: dict) -> tuple[str, str]:
    obj = description["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    return obj["MetricName"], obj["Type"]


def static_hyperparameters(description: dict) -> dict[str, str]:
    """The fixed hyperparameters every trial got, without SageMaker's own keys."""
    static = description.get("TrainingJobDefinition", {}).get("StaticHyperParameters", {})
    return {k: v.strip('"') for k, v in static.items()
            if not k.startswith(("sagemaker_", "_"))}


def tuned_names(description: dict) -> list[str]:
    ranges = description["HyperParameterTuningJobConfig"].get("ParameterRanges", {})
    return [r["Name"] for kind in ("CategoricalParameterRanges", "ContinuousParameterRanges",
                                   "IntegerParameterRanges") for r in ranges.get(kind, [])]


def log_scaled(description: dict) -> set[str]:
    ranges = description["HyperParameterTuningJobConfig"].get("ParameterRanges", {})
    return {r["Name"] for kind in ("ContinuousParameterRanges", "IntegerParameterRanges")
            for r in ranges.get(kind, []) if r.get("ScalingType", "").startswith(
                ("Logarithmic", "ReverseLogarithmic"))}


def objective_value(trial: dict) -> float | None:
    metric = trial.get("FinalHyperParameterTuningJobObjectiveMetric")
    return None if metric is None else float(metric["Value"])


def rows(trials: list[dict], names: list[str], extra: tuple[str, ...] = ()
         ) -> list[dict[str, Any]]:
    """One row per trial, in the order they were created; `extra` names further keys
    of each trial to add as columns (the local tuner's duration and failure reason)."""
    out = []
    for t in sorted(trials, key=lambda t: str(t.get("CreationTime", ""))):
        tuned = {k: v.strip('"') for k, v in t.get("TunedHyperParameters", {}).items()}
        out.append({"training_job": t["TrainingJobName"], "status": t["TrainingJobStatus"],
                    "objective": objective_value(t), **{n: tuned.get(n, "") for n in names},
                    **{c: t.get(c, "") for c in extra}})
    return out


def best(trials: list[dict], objective_type: str) -> dict | None:
    """The completed trial with the best objective (Maximize or Minimize), or None."""
    scored = [t for t in trials if objective_value(t) is not None
              and t["TrainingJobStatus"] == "Completed"]
    if not scored:
        return None
    pick = max if objective_type == "Maximize" else min
    return pick(scored, key=objective_value)


def _cell(value: Any, objective: bool) -> str:
    """Objective to 4 decimals; long tuned numbers to 4 significant digits (CSV keeps all)."""
    if value is None:
        return "-"
    if objective:
        return f"{value:.4f}"
    try:
        number = float(value)
    except ValueError:
        return str(value)
    return str(value) if len(str(value)) <= 8 else f"{number:.4g}"


def table(rows_: list[dict[str, Any]]) -> str:
    if not rows_:
        return "(no trials)"
    cols = list(rows_[0])
    cells = [[_cell(r[c], c == "objective") for c in cols] for r in rows_]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def plot(rows_: list[dict[str, Any]], names: list[str], objective: str, objective_type: str,
         log_names: set[str], path: Path) -> Path:
    """Objective per trial with the best so far, and objective against each tuned value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(i + 1, r) for i, r in enumerate(rows_) if r["objective"] is not None]
    panels = 1 + len(names)
    cols = min(3, panels)
    nrows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
    axes = axes.ravel()
    xs = [i for i, _ in scored]
    ys = [r["objective"] for _, r in scored]
    better = max if objective_type == "Maximize" else min
    running = [better(ys[: k + 1]) for k in range(len(ys))]
    ax = axes[0]
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, running, where="post", label="best so far")
    ax.set(title="search progress", xlabel="trial (in start order)", ylabel=objective)
    ax.legend()
    for ax, name in zip(axes[1:], names, strict=False):
        values = [r[name] for _, r in scored]
        try:
            numbers = [float(v) for v in values]
            ax.plot(numbers, ys, "o")
            if name in log_names:
                ax.set_xscale("log")
        except ValueError:
            cats = sorted(set(values))
            ax.plot([cats.index(v) for v in values], ys, "o")
            ax.set_xticks(range(len(cats)), cats, rotation=30)
        ax.set(title=name, xlabel=name, ylabel=objective)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(f"hyperparameter search: {len(rows_)} trials, objective {objective} "
                 f"({objective_type})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(description: dict, trials: list[dict], outdir: Path,
          extra_columns: tuple[str, ...] = ()) -> dict:
    """Print the table; write trials.csv, best.json and search.png to outdir."""
    name = description["HyperParameterTuningJobName"]
    objective, objective_type = objective_of(description)
    names = tuned_names(description)
    table_rows = rows(trials, names, extra_columns)
    print(f"\ntuning job {name}: {description.get('HyperParameterTuningJobStatus')}, "
          f"{len(trials)} trials, objective {objective} ({objective_type})\n")
    print(table(table_rows))
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table_rows[0]) if table_rows
                                else ["training_job", "status", "objective"])
        writer.writeheader()
        writer.writerows(table_rows)
    result = {"tuning_job": name, "trials": len(trials), "csv": str(outdir / "trials.csv")}
    top = best(trials, objective_type)
    if top is not None:
        hps = {**static_hyperparameters(description),
               **{k: v.strip('"') for k, v in top["TunedHyperParameters"].items()}}
        best_doc = {"tuning_job": name, "training_job": top["TrainingJobName"],
                    "objective": {"name": objective, "type": objective_type,
                                  "value": objective_value(top)},
                    "hyperparameters": hps}
        (outdir / "best.json").write_text(json.dumps(best_doc, indent=2) + "\n")
        result["best"] = str(outdir / "best.json")
        print(f"\nbest: {top['TrainingJobName']} {objective}={objective_value(top):.4f} "
              f"with {json.dumps(hps)}")
    else:
        print("\nno trial finished with an objective value; no best.json written")
    if any(r["objective"] is not None for r in table_rows):
        result["plot"] = str(plot(table_rows, names, objective, objective_type,
                                  log_scaled(description), outdir / "search.png"))
    return result
