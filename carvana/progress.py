"""Progress of the long steps a user waits for: a rich bar on a terminal, like the training's; elsewhere (CI, a log
file) one line at the start and one at the end. On stdout, as Lightning's bar: stderr keeps the errors."""

import time
from collections.abc import Iterable, Iterator
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
