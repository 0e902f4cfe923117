"""Progress of the long steps a user waits for: a rich bar on a terminal, like the training's; elsewhere (CI, a log
file) one line at the start and one at the end. On stdout, as Lightning's bar: stderr keeps the errors. Tiled
prediction counts its tiles on Lightning's predict bar (tile_counter)."""

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")


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
