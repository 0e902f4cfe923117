"""report.html: one self-contained page (inline CSS, PNGs as data URIs) of the out-of-fold report's tables and plots."""

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg renders savefig's PNG

from carvana import CarvanaError
from carvana.files import atomic_path
from carvana.predict.scores import unit_of

STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f0f0f0; }
tr.best td { background: #fff3b0; font-weight: bold; }
img { max-width: 100%; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; }
figcaption { font-family: monospace; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; border: 1px solid #444; }
"""
FIGSIZE = (7.5, 3.6)  # inches at 100 dpi: a 750x360 PNG, two plots side by side on a laptop screen
DPI = 100


def dice_text(value: float) -> str:
    """A Dice or loss as the page shows it: 5 decimals, as the command's printed summary."""
    return f"{value:.5f}"


def png_uri(rgb: np.ndarray) -> str:
    """HxWx3 uint8 RGB image -> a data:image/png;base64 URI."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok, rgb.shape
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def figure_uri(fig: Figure) -> str:
    """A matplotlib figure -> a data:image/png;base64 URI of its PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image(uri: str, alt: str, caption: str | None = None) -> str:
    """An <img> of a data URI, in a <figure> with a caption when one is given."""
    tag = f'<img src="{uri}" alt="{html.escape(alt)}">'
    return f"<figure>{tag}<figcaption>{html.escape(caption)}</figcaption></figure>" if caption else tag


def table(frame: pd.DataFrame, table_id: str, formats: dict[str, Callable], best: int | None = None) -> str:
    """A DataFrame as an HTML <table id=...>, its columns formatted by `formats` (str otherwise), row `best` marked."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        texts = (formats.get(c, str)(v) if not pd.isna(v) else "" for c, v in zip(frame.columns, row))
        cells = "".join(f"<td>{html.escape(text)}</td>" for text in texts)
        rows.append(f'<tr class="best">{cells}</tr>' if i == best else f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def section(section_id: str, title: str, *parts: str) -> str:
    """A <section id=...> with an <h2> title and its HTML parts."""
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def row(*parts: str) -> str:
    """HTML parts side by side (a plot and its table), wrapping on a narrow screen."""
    return '<div class="row">' + "".join(f"<div>{part}</div>" for part in parts) + "</div>"


def page(title: str, intro: str, sections: list[str]) -> str:
    """The whole HTML document: title, an intro paragraph and the sections; no external resources."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1><p>{intro}</p>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_page(path: Path, text: str) -> None:
    """Write the page through a temporary name, so an interrupted run leaves no half page."""
    with atomic_path(path) as tmp:
        try:
            tmp.write_text(text, encoding="utf-8")
        except OSError as err:
            raise CarvanaError(f"cannot write {path} ({err.strerror}): check the directory is writable") from None


def spread(per_image: pd.DataFrame, unit: str) -> pd.DataFrame:
    """The per-photo Dice's count, mean, std (ddof 1), min, 5/25/50/75/95th percentiles (linear) and max."""
    dice = per_image.dice
    stats = {"photos": len(dice), f"{unit}s": per_image[unit].nunique(), "mean": dice.mean(), "std": dice.std(),
             "min": dice.min()}
    stats.update({f"p{q}": dice.quantile(q / 100) for q in (5, 25, 50, 75, 95)})
    stats["max"] = dice.max()
    return pd.DataFrame([stats])


def plot_angles(per_angle: pd.DataFrame, per_image: pd.DataFrame) -> str:
    """Mean Dice of each angle 1..16 as bars, each photo's Dice as a dot -> PNG data URI."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    by_angle = per_angle.sort_values("angle")
    ax.bar(by_angle.angle, by_angle.dice, color="#8fb3d9", label="mean")
    ax.plot(per_image.angle, per_image.dice, ".", color="#333", markersize=3, label="photo")
    ax.set(xlabel="angle (the photo's _NN)", ylabel="Dice", xticks=range(1, 17), xlim=(0.4, 16.6))
    ax.set_ylim(*zoom(per_image.dice))
    # above the plot: the bars can reach any corner of it
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, frameon=False, fontsize=8)
    return figure_uri(fig)


def plot_groups(per_group: pd.DataFrame, unit: str) -> str:
    """Mean Dice of each group (car), hardest first, their names on the axis when they fit -> PNG data URI."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    ax.bar(range(len(per_group)), per_group.dice, color="#8fb3d9", width=1.0 if len(per_group) > 60 else 0.8)
    if len(per_group) <= 40:  # more names than this do not fit under a 7.5-inch axis
        ax.set_xticks(range(len(per_group)), per_group[unit], rotation=90, fontsize=7)
    ax.set(xlabel=f"{len(per_group)} {unit}s, hardest first", ylabel="mean Dice", ylim=zoom(per_group.dice))
    return figure_uri(fig)


def plot_sweep(sweep: pd.DataFrame, threshold: float) -> str:
    """Mean Dice against the threshold, the best one and the report's threshold marked -> PNG data URI."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    best = sweep.loc[sweep.dice.idxmax()]
    ax.plot(sweep.threshold, sweep.dice, "o-", color="#2b6cb0", markersize=4)
    ax.axvline(threshold, color="#888", linestyle=":", label=f"threshold={threshold}")
    ax.plot([best.threshold], [best.dice], "*", color="#d62728", markersize=14,
            label=f"best {best.threshold:.2f}: {dice_text(best.dice)}")
    ax.set(xlabel="threshold", ylabel="mean Dice", ylim=zoom(sweep.dice))
    ax.legend(loc="lower center", fontsize=8)
    return figure_uri(fig)


def plot_histogram(per_image: pd.DataFrame) -> str:
    """Histogram of the per-photo Dice -> PNG data URI."""
    fig = Figure(figsize=FIGSIZE)
    ax = fig.subplots()
    ax.hist(per_image.dice, bins=min(50, max(10, len(per_image) // 20)), range=zoom(per_image.dice), color="#8fb3d9",
            edgecolor="#2b6cb0")
    ax.axvline(per_image.dice.mean(), color="#d62728", label=f"mean {dice_text(per_image.dice.mean())}")
    ax.set(xlabel="Dice", ylabel="photos")
    ax.legend(fontsize=8)
    return figure_uri(fig)


def zoom(values: pd.Series) -> tuple[float, float]:
    """Axis limits around Dice values, as they crowd near 1 on a 0..1 axis: from half their spread below their min (the
    worst bar stays a third of the axis high, not a sliver) to 1."""
    low = float(values.min())
    return max(0.0, low - 0.5 * (1 - low) - 1e-4), 1.0 + 0.02 * (1 - low) + 1e-4


def oof_page(tables: dict[str, pd.DataFrame], overlays: list[tuple[str, float, np.ndarray]], source: str,
             threshold: float, colours: dict[str, tuple[int, int, int]]) -> str:
    """The out-of-fold report page from the tables write_report saved and the worst photos' (image, dice, RGB tile);
    Carvana's photos are grouped by car and shown by angle, other data sets by group."""
    per_image, sweep = tables["per_image"], tables["thresholds"]
    unit = unit_of(per_image)
    per_group = tables[f"per_{unit}"]
    dice_formats = {"dice": dice_text, "mean": dice_text, "std": dice_text, "min": dice_text, "max": dice_text,
                    **{f"p{q}": dice_text for q in (5, 25, 50, 75, 95)}, "threshold": "{:.2f}".format}
    best = int(sweep.dice.idxmax())
    hardest = per_group.head(10)
    legend = " ".join(
        f'<span class="swatch" style="background: rgb{colour}"></span> {html.escape(name)}'
        for name, colour in colours.items()
    )
    worst_parts = [image(png_uri(tile), name, f"{name} dice {dice_text(dice)}") for name, dice, tile in overlays]
    angles = []
    if "per_angle" in tables:
        per_angle = tables["per_angle"]
        angles.append(section("angles", "Dice by angle", row(image(plot_angles(per_angle, per_image), "Dice by angle"),
                                                             table(per_angle, "angle-table", dice_formats))))
    sections = [
        section("summary", "Dice per photo", table(spread(per_image, unit), "summary-table", dice_formats)),
        *angles,
        section("cars", f"Dice by {unit}", row(image(plot_groups(per_group, unit), f"Dice by {unit}"),
                f"<p>The {len(hardest)} hardest of {_count(len(per_group), unit)} (all in per_{unit}.csv):</p>"
                + table(hardest, "car-table", dice_formats))),
        section("thresholds", "Threshold sweep", row(image(plot_sweep(sweep, threshold), "Threshold sweep"),
                f"<p>Best threshold <b>{sweep.threshold[best]:.2f}</b>: mean Dice <b>{dice_text(sweep.dice[best])}"
                "</b>.</p>" + table(sweep, "threshold-table", dice_formats, best=best))),
        section("histogram", "Per-photo Dice", image(plot_histogram(per_image), "Histogram of per-photo Dice")),
        section("worst", "Worst photos", f"<p>{legend}</p>" if overlays else "<p>worst=0: no photos drawn.</p>",
                *worst_parts),
    ]
    intro = (f"Predictions <code>{html.escape(str(source))}</code>, object where probability &gt; {threshold}: "
             f"{_count(len(per_image), 'photo')} of {_count(per_image[unit].nunique(), unit)}. Numbers from the CSVs "
             "beside this page.")
    return page("Out-of-fold report", intro, sections)


def _count(n: int, word: str) -> str:
    """'1 photo', '3 photos'."""
    return f"{n} {word}{'' if n == 1 else 's'}"
