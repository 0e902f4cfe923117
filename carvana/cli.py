"""`key=value` command lines of the small tools (python -m carvana.crops / carvana.report)."""

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import OmegaConf

from carvana import CarvanaError

T = TypeVar("T")
_KINDS = {int: "an integer", bool: "true or false", str: "a string"}


def parse_words(argv: list[str], defaults: dict, example: str, types: dict[str, type | tuple]) -> dict:
    """`key=value` words over `defaults`; a word without '=', an unknown key or a value of the wrong type is refused."""
    bad = [word for word in argv if "=" not in word]
    if bad:
        raise CarvanaError(f"'{bad[0]}' is not key=value: use e.g. {example}")
    given = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise CarvanaError(f"unknown key '{unknown[0]}': choose from {', '.join(defaults)}")
    cfg = {**defaults, **given}
    for key, kind in types.items():
        value = cfg[key]
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise CarvanaError(f"{key}={value} is not {_KINDS.get(kind, 'a number')}")
    return cfg


def run_or_exit(argv: list[str], doc: str, work: Callable[[list[str]], T]) -> T:
    """`-h` prints `doc` and exits 0; a CarvanaError of `work(argv)` prints one `error:` line and exits 2."""
    if argv and argv[0] in ("-h", "--help"):
        print(doc.strip())
        sys.exit(0)
    try:
        return work(argv)
    except CarvanaError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
