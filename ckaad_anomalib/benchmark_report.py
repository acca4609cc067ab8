"""Readable output of ``ckaad-benchmark``: a Markdown table (mean ± std over seeds) and one plot per results folder.

:func:`write_report` reads every ``*.csv`` that ``ckaad-benchmark --out DIR`` wrote into ``DIR`` and writes
``DIR/table.md`` and ``DIR/plot.png`` (image and pixel AUROC per model with error bars, image AUROC against fit
time). Failed jobs are listed under the table of their dataset, never averaged away.
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
        lines = [f"### {dataset}", "", _settings(rows), ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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


def _settings(rows: pd.DataFrame) -> str:
    """One line: the grid settings the dataset's rows share, the seeds, and the coarse anomalies drawn per seed."""
    parts = []
    for key, label in (("image_size", "image size"), ("max_epochs", "epochs")):
        if key in rows and rows[key].notna().any():
            parts.append(f"{label} {', '.join(str(v) for v in rows[key].dropna().unique())}")
    parts.append(f"seeds {', '.join(str(s) for s in sorted(rows['seed'].dropna().unique()))}")
    if "n_coarse" in rows and (rows["n_coarse"] > 0).any():
        coarse = rows[rows["n_coarse"] > 0].groupby("seed")["n_coarse"].first()
        parts.append(f"coarse anomalies per seed {' / '.join(str(int(n)) for n in coarse)}")
    return "Settings: " + "; ".join(parts) + "."


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


def _colour(model: str) -> str:
    """Ckaad and its variants red, the Recon twin orange, anomalib's peers and the weak peer blue."""
    if model.startswith("Ckaad"):
        return "tab:red"
    return "tab:orange" if model == "Recon" else "tab:blue"


def plot(table: pd.DataFrame, path: Path) -> list[str]:
    """Per dataset: image AUROC and (with masks) pixel AUROC per model, mean ± std over seeds; AUROC vs fit time.

    Returns:
        The titles of the panels drawn, row by row.
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["status"] == "ok"].copy()
    for column in ("image_AUROC", "pixel_AUROC"):
        ok[column] = pd.to_numeric(ok[column], errors="coerce") if column in ok else float("nan")
    datasets = list(dict.fromkeys(ok["dataset"]))
    # A pixel column only when some dataset has masks; a dataset without them (ELPV) says so in its cell.
    panels = [("image_AUROC", "image AUROC")] + [("pixel_AUROC", "pixel AUROC")] * bool(ok["pixel_AUROC"].notna().any())
    columns = len(panels) + 1
    figure, axes = plt.subplots(len(datasets), columns, figsize=(6 * columns, 4.2 * len(datasets)), squeeze=False)
    for (*bars, scatter), dataset in zip(axes, datasets, strict=True):
        rows = ok[ok["dataset"] == dataset].groupby("model.name", sort=False)
        fit = rows["fit_duration"].median()
        for ax, (column, label) in zip(bars, panels, strict=True):
            mean, std = rows[column].mean().dropna(), rows[column].std().fillna(0.0)
            if mean.empty:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{dataset}: no pixel masks", ha="center", va="center", transform=ax.transAxes)
                continue
            std = std[mean.index]
            ax.bar(range(len(mean)), mean, yerr=std, color=[_colour(m) for m in mean.index], capsize=3)
            ax.set_xticks(range(len(mean)), mean.index, rotation=35, ha="right")
            ax.set_ylim(max(0.0, math.floor((mean - std).min() * 20) / 20 - 0.05), 1.0)
            ax.set_ylabel(label)
            ax.set_title(f"{dataset}: {label}, mean ± std over seeds", fontsize="medium")
            ax.grid(axis="y", alpha=0.3)
        mean, std = rows["image_AUROC"].mean(), rows["image_AUROC"].std().fillna(0.0)
        markers, peers = "osD^vP*Xhp<>", plt.get_cmap("tab20b")
        for i, model in enumerate(mean.index):  # a legend, not labels: close points would overprint each other
            colour = peers(i % 20) if _colour(model) == "tab:blue" else _colour(model)
            scatter.errorbar(
                fit[model], mean[model], yerr=std[model], fmt=markers[i % len(markers)], capsize=3, markersize=7,
                color=colour, label=model,
            )  # fmt: skip
        scatter.set_xscale("log")
        scatter.set_xlabel("fit seconds (median over seeds)")
        scatter.set_ylabel("image AUROC")
        scatter.set_title(f"{dataset}: image AUROC vs fit time", fontsize="medium")
        scatter.grid(alpha=0.3)
        scatter.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    titles = [ax.get_title() for ax in figure.axes if ax.axison]
    plt.close(figure)
    return titles


def write_report(folder: Path) -> None:
    """Rewrite ``folder/table.md`` and ``folder/plot.png`` from every results CSV in ``folder``."""
    table = load(folder)
    (folder / "table.md").write_text(
        "Quality: mean ± std over seeds; costs: median over seeds.\n"
        "Per-kind AUROC (seen = the coarse anomalies' kind) and AUPRO are on raw scores; the other metrics are "
        "anomalib's, thresholds fitted on the validation split.\n\n" + summarise(table),
        encoding="utf-8",
    )
    if (table["status"] == "ok").any():
        plot(table, folder / "plot.png")
