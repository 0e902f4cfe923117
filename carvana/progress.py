"""Progress of the long steps a user waits for: a rich bar on a terminal, like the training's; elsewhere (CI, a log
file) one line at the start and one at the end. On stdout, as Lightning's bar: stderr keeps the errors. Tiled
prediction counts its tiles on Lightning's predict bar (tile_counter). Lightning's own lines that say nothing about
the run stay off the screen (quiet_lightning)."""

import logging
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")

# Lightning's lines that say nothing about this run: tips for its products, the `limit_*_batches=1.0` it was
# given, deprecations inside its own code, a logging interval longer than a tiny epoch, and on a resume the folders
# it finds full (the run's own: MetricsHistory restores the CSV log) and its torch.load default
QUIET_WARNINGS = [r"The number of training batches \(\d+\) is smaller than the logging interval",
                  r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                  r"Experiment logs directory .* exists and is not empty",
                  r"Checkpoint directory .* exists and is not empty"]
QUIET_INFO = re.compile(r"^(💡 Tip|`Trainer\(limit_(train|val)_batches=1\.0\)` was configured|"
                        r"`weights_only` was not set)")


def quiet_lightning() -> None:
    """Lightning's tips, deprecations and logging-interval notes off the screen (QUIET_WARNINGS, QUIET_INFO)."""
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.trainer.connectors.checkpoint_connector",
                 "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietInfo) for f in logger.filters):
            logger.addFilter(_QuietInfo())


class _QuietInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not QUIET_INFO.match(record.getMessage())


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items`, showing how many of `total` are done."""
    console = Console()
    if console.is_terminal:
        yield from track(items, description=description, total=total, console=console)
        return
    counted = "" if total is None else f" ({total})"
    print(f"{description}{counted} ...", flush=True)
    start = time.perf_counter()
    yield from items
    print(f"{description}{counted}: done in {time.perf_counter() - start:.1f} s", flush=True)


def tile_counter(trainer: object, label: str = "") -> Callable[[int, int], None]:
    """A callback (done, total) that shows a photo's tiles on the trainer's predict bar (Lightning's bar counts
    batches: a large photo in tiles would sit at 0/1); a no-op without a bar."""
    from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar  # here: submit needs no Lightning

    bar = getattr(trainer, "progress_bar_callback", None)

    def show(done: int, total: int) -> None:
        text = f"tiles {done}/{total}{label}"
        if isinstance(bar, TQDMProgressBar) and bar._predict_progress_bar is not None:
            bar._predict_progress_bar.set_postfix_str(text, refresh=True)
        elif isinstance(bar, RichProgressBar) and bar.progress is not None and bar.predict_progress_bar_id is not None:
            bar.progress.update(bar.predict_progress_bar_id, description=f"Predicting ({text})")
            bar.refresh()

    return show
