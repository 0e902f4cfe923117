"""A training run's report.html: learning curves from csv/metrics.csv (Lightning's CSVLogger), best epoch, config."""

import html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from carvana import CarvanaError
from carvana.files import atomic_path, is_temporary
from carvana.report.html import dice_text, figure_uri, image, page, section, table, write_page

METRICS = "csv/metrics.csv"  # CSVLogger(out_dir, name="csv", version="") in carvana/training/loggers.py
CONFIG, OVERRIDES = ".hydra/config.yaml", ".hydra/overrides.yaml"
MONITOR = "val_dice"  # ModelCheckpoint's monitor in carvana/training/resume.py, mode max: the best epoch


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run's csv/metrics.csv sorted by step; a missing folder or log, or one without a logged epoch: CarvanaError."""
    if not run_dir.is_dir():
        raise CarvanaError(f"run_dir={run_dir} does not exist: point it at a train.py run folder (outputs/train/<run>)")
    path = run_dir / METRICS
    if not path.is_file():
        raise CarvanaError(
            f"run_dir={run_dir} has no {METRICS}: point it at a train.py run folder (outputs/train/<run>) "
            "that has logged at least one step"
        )
    try:
        metrics = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        reason = str(err).splitlines()[0]
        raise CarvanaError(f"{path} is not a CSV log ({reason}): was the run killed mid-write?") from None
    if "step" not in metrics.columns:
        raise CarvanaError(f"{path} has no 'step' column: not a Lightning CSVLogger log")
    if metrics.empty or "epoch" not in metrics.columns or metrics.epoch.isna().all():  # a run stopped early
        raise CarvanaError(f"{path} holds no logged epoch yet: report again after the run's first logged step")
    return metrics.sort_values("step", kind="stable").reset_index(drop=True)


def epoch_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch: its last step, each epoch-level metric's last value, each lr-* at the epoch's start."""
    logged = metrics.dropna(subset=["epoch"])
    values = [c for c in logged.columns if c not in ("epoch", "step") and not c.endswith("_step") and "lr-" not in c]
    values = sorted(values, key=lambda c: ("dice" in c, c != MONITOR, c))  # losses, val_dice, the other Dice
    last = {c: (c, "last") for c in values}  # groupby's last skips NaN: the one row per epoch that logged it
    epochs = logged.groupby("epoch").agg(start=("step", "min"), step=("step", "max"), **last)
    epochs = epochs.reset_index().astype({"epoch": int})
    if MONITOR not in epochs:  # no validation ran (limit_val_batches=0): the page says so, the columns stay the same
        epochs[MONITOR] = np.nan
    lr_columns = [c for c in metrics.columns if c.startswith("lr-")]
    if lr_columns:
        # LearningRateMonitor logs an epoch's LR on a row of its own, without an epoch, at the epoch's first step
        lrs = metrics.dropna(subset=lr_columns, how="all")[["step", *lr_columns]]
        epochs = pd.merge_asof(epochs, lrs, left_on="start", right_on="step", suffixes=("", "_lr"))
        epochs = epochs.drop(columns="step_lr")
    return epochs.drop(columns="start")


def best_epoch(epochs: pd.DataFrame) -> int | None:
    """The row of the epoch table with the highest val_dice (the first of ties), None when none was logged."""
    return int(epochs[MONITOR].idxmax()) if epochs[MONITOR].notna().any() else None


def plot_curves(metrics: pd.DataFrame, epochs: pd.DataFrame, best: int | None) -> str:
    """Loss, Dice and LR against the step, the best epoch marked on each -> PNG data URI."""
    fig = Figure(figsize=(14, 3.8))
    loss_ax, dice_ax, lr_ax = fig.subplots(1, 3)
    for column in [c for c in metrics.columns if c.endswith("_step") and "loss" in c]:
        rows = metrics.dropna(subset=[column])
        loss_ax.plot(rows.step, rows[column], color="#999", linewidth=0.8, label=column)
    for column in [c for c in epochs.columns if "loss" in c]:
        loss_ax.plot(epochs.step, epochs[column], "o-", markersize=4, label=column)
    for column in [c for c in epochs.columns if "dice" in c]:
        dice_ax.plot(epochs.step, epochs[column], "o-", markersize=4, label=column)
    lr_columns = [c for c in metrics.columns if c.startswith("lr-")]
    for column in lr_columns:
        rows = metrics.dropna(subset=[column])
        # the last LR holds to the last logged step
        steps, lrs = [*rows.step, metrics.step.max()], [*rows[column], rows[column].iloc[-1]]
        lr_ax.plot(steps, lrs, drawstyle="steps-post", label=column)
    if lr_columns and (metrics[lr_columns] > 0).any().all():
        lr_ax.set_yscale("log")  # cosine and cyclic schedules span decades
    if not lr_columns:
        lr_ax.text(0.5, 0.5, "no lr-* column logged", ha="center", transform=lr_ax.transAxes)
    if best is not None:
        step, dice = epochs.step[best], epochs[MONITOR][best]
        dice_ax.plot([step], [dice], "*", color="#d62728", markersize=14,
                     label=f"best epoch {epochs.epoch[best]}: {dice_text(dice)}")
        for ax in (loss_ax, dice_ax, lr_ax):
            ax.axvline(step, color="#d62728", linestyle=":", linewidth=1)
    for ax, title in ((loss_ax, "loss"), (dice_ax, "Dice"), (lr_ax, "learning rate")):
        ax.set(xlabel="step", title=title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_uri(fig)


def config_part(run_dir: Path) -> str:
    """The run's resolved config and its command-line overrides as <pre> text, or a line saying they are missing."""
    parts = []
    for name, title in ((OVERRIDES, "Command-line overrides"), (CONFIG, "Resolved config")):
        path = run_dir / name
        text = f"<pre>{html.escape(path.read_text(encoding='utf-8'))}</pre>" if path.is_file() else (
            f"<p>no {name} in run_dir: not a Hydra run of train.py?</p>")
        parts.append(f"<h3>{title} (<code>{name}</code>)</h3>{text}")
    return "".join(parts)


def run_page(run_dir: Path, metrics: pd.DataFrame, epochs: pd.DataFrame, best: int | None) -> str:
    """The training run's page: learning curves, the per-epoch table with the best row marked, the config."""
    formats = {c: dice_text for c in epochs.columns if "loss" in c or "dice" in c}
    formats.update({c: "{:.4g}".format for c in epochs.columns if c.startswith("lr-")})
    if best is None:
        verdict = f"<p>No {MONITOR} logged: no validation ran, so no best epoch.</p>"
    else:
        verdict = (f"<p>Best epoch <b>{epochs.epoch[best]}</b> (step {epochs.step[best]}): {MONITOR} "
                   f"<b>{dice_text(epochs[MONITOR][best])}</b>, the checkpoint's monitor.</p>")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt") if not is_temporary(p))
    intro = (f"Run <code>{html.escape(str(run_dir))}</code>: {len(epochs)} epochs, {int(metrics.step.max())} steps "
             f"logged; checkpoints: {html.escape(', '.join(checkpoints) or 'none')}.")
    sections = [
        section("curves", "Learning curves", image(plot_curves(metrics, epochs, best), "Learning curves")),
        section("epochs", "Epochs", verdict, table(epochs, "epoch-table", formats, best=best)),
        section("config", "Config", config_part(run_dir)),
    ]
    return page("Training run report", intro, sections)


def write_run_report(run_dir: str, output_dir: str) -> pd.DataFrame:
    """Write epochs.csv and report.html of a train.py run folder into output_dir -> the per-epoch table."""
    run = Path(run_dir)
    metrics = read_metrics(run)
    epochs = epoch_table(metrics)
    text = run_page(run, metrics, epochs, best_epoch(epochs))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "epochs.csv") as tmp:
        epochs.to_csv(tmp, index=False)
    write_page(out / "report.html", text)
    return epochs
