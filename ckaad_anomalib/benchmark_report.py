"""Readable output of ``ckaad-benchmark``: a Markdown table (mean ± std over seeds) and one plot per results folder.

:func:`write_report` reads every ``*.csv`` that ``ckaad-benchmark --out DIR`` wrote into ``DIR`` and writes
``DIR/table.md`` and ``DIR/plot.png`` (image AUROC per model with error bars, and image AUROC against fit time).
Failed jobs are listed under the table of their dataset, never averaged away.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

# metric column: its header in the table; per-kind AUROC columns (AUROC_seen_* / AUROC_unseen_*) follow these
QUALITY = {
    "image_AUROC": "image AUROC",
    "image_F1Score": "image F1",
    "pixel_AUROC": "pixel AUROC",
    "AUPRO": "AUPRO",
}
COST = {
    "fit_duration": "fit s",
    "train_s_per_step": "s/step",
    "test_images_per_s": "test img/s",
    "fit_peak_rss_mb": "fit peak MiB",
    "test_peak_rss_mb": "test peak MiB",
}
TWIN = ("Ckaad", "Recon")  # the step-time ratio the issue asks for: Ckaad over its Recon twin, same run


def load(folder: Path) -> pd.DataFrame:
    """Every results CSV of ``folder``, one table, with a ``dataset`` label per row."""
    frames = [pd.read_csv(path) for path in sorted(folder.glob("*.csv"))]
    if not frames:
        msg = f"{folder}: no results CSV (run ckaad-benchmark --config GRID --out {folder} first)."
        raise FileNotFoundError(msg)
    table = pd.concat(frames, ignore_index=True)
    table["dataset"] = [dataset_label(row) for row in table.to_dict("records")]
    if "model.name" not in table:
        table["model.name"] = table["model.class_path"].astype(str).str.split(".").str[-1]
    return table


def dataset_label(row: dict) -> str:
    """``data.name`` if the grid gave one, else the datamodule (the wrapped one for coarse data) and category."""
    if isinstance(row.get("data.name"), str):
        return row["data.name"]
    parts = [row.get(key) for key in ("data.init_args.datamodule.class_path", "data.class_path")]
    name = next(str(p).split(".")[-1] for p in [*parts, "data"] if isinstance(p, str))
    for key in ("category", "module_type"):
        for prefix in ("data.init_args.datamodule.init_args.", "data.init_args."):
            if isinstance(row.get(prefix + key), str):
                return f"{name} {row[prefix + key]}"
    return name


def _mean_std(values: pd.Series, digits: int) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _median(values: pd.Series, digits: int) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return "–" if values.empty else f"{values.median():.{digits}f}"


def summarise(table: pd.DataFrame) -> str:
    """Markdown: per dataset, one row per model (grid order) with quality mean ± std and median costs."""
    sections = []
    for dataset, rows in table.groupby("dataset", sort=False):
        ok = rows[rows["status"] == "ok"]
        kinds = sorted(c for c in ok.columns if c.startswith("AUROC_") and ok[c].notna().any())
        quality = [c for c in QUALITY if c in ok and ok[c].notna().any()] + kinds
        header = ["model", "seeds", *(QUALITY.get(c, c.removeprefix("AUROC_")) for c in quality), *COST.values()]
        lines = [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for model, runs in ok.groupby("model.name", sort=False):
            cells = [str(model), str(runs["seed"].nunique())]
            cells += [_mean_std(runs[c], 4) for c in quality]
            cells += [_median(runs[c], 3 if c == "train_s_per_step" else 1) for c in COST if c in runs] + [
                "–" for c in COST if c not in runs
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += _twin_ratio(ok)
        for row in rows[rows["status"] == "error"].to_dict("records"):
            lines.append(f"- **failed**: {row.get('model.name')} seed {row.get('seed')}: {row.get('error')}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def _twin_ratio(ok: pd.DataFrame) -> list[str]:
    """Ckaad's seconds per training step over its Recon twin's, per seed of the same run."""
    if "train_s_per_step" not in ok:
        return []
    steps = ok.pivot_table(index="seed", columns="model.name", values="train_s_per_step", aggfunc="first")
    if not set(TWIN) <= set(steps.columns):
        return []
    ratio = (steps[TWIN[0]] / steps[TWIN[1]]).dropna()
    if ratio.empty:
        return []
    return ["", f"Ckaad s/step ÷ Recon s/step (same run, per seed): {', '.join(f'{r:.2f}' for r in ratio)}"]


def plot(table: pd.DataFrame, path: Path) -> None:
    """Per dataset: image AUROC per model (mean ± std over seeds) and image AUROC against fit seconds."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"].copy()
    ok["image_AUROC"] = pd.to_numeric(ok["image_AUROC"], errors="coerce")
    datasets = list(dict.fromkeys(ok["dataset"]))
    figure, axes = plt.subplots(len(datasets), 2, figsize=(12, 3.6 * len(datasets)), squeeze=False)
    for (bars, scatter), dataset in zip(axes, datasets, strict=True):
        stats = (
            ok[ok["dataset"] == dataset]
            .groupby("model.name", sort=False)
            .agg(auroc=("image_AUROC", "mean"), std=("image_AUROC", "std"), fit=("fit_duration", "median"))
        )
        stats["std"] = stats["std"].fillna(0.0)
        colours = ["tab:red" if name in TWIN else "tab:blue" for name in stats.index]
        bars.bar(range(len(stats)), stats["auroc"], yerr=stats["std"], color=colours, capsize=3)
        bars.set_xticks(range(len(stats)), stats.index, rotation=30, ha="right")
        low = max(0.0, math.floor((stats["auroc"] - stats["std"]).min() * 20) / 20 - 0.05)
        bars.set_ylim(low, 1.0)
        bars.set_ylabel("image AUROC")
        bars.set_title(f"{dataset}: image AUROC (mean ± std over seeds)")
        scatter.errorbar(stats["fit"], stats["auroc"], yerr=stats["std"], fmt="o", capsize=3)
        for name, row in stats.iterrows():
            scatter.annotate(str(name), (row["fit"], row["auroc"]), textcoords="offset points", xytext=(4, 4))
        scatter.set_xscale("log")
        scatter.set_xlabel("fit seconds (median over seeds)")
        scatter.set_ylabel("image AUROC")
        scatter.set_title(f"{dataset}: quality vs fit time")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(folder: Path) -> None:
    """Rewrite ``folder/table.md`` and ``folder/plot.png`` from every results CSV in ``folder``."""
    table = load(folder)
    settings = ["image_size", "max_epochs"]
    first = table.iloc[0].to_dict()
    head = ", ".join(f"{key} {first[key]}" for key in settings if key in first and pd.notna(first[key]))
    (folder / "table.md").write_text(
        f"Settings of the first row: {head or 'from the grids'}; quality: mean ± std over seeds; costs: median.\n"
        "Per-kind AUROC (seen = the coarse anomalies' kind) and AUPRO are on raw scores; the other metrics are "
        "anomalib's, thresholds fitted on the validation split.\n\n" + summarise(table),
        encoding="utf-8",
    )
    if (table["status"] == "ok").any():
        plot(table, folder / "plot.png")
