"""One command-line style for every tool: `key=value` words over a YAML file of conf/ (Hydra's override grammar, as
train.py's), `--help` written from that file's own comments, renamed keys kept for a release with a notice, and
expected errors as one `error:` line with exit status 2."""

import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

from omegaconf import OmegaConf

from carvana import CarvanaError

CONF = Path(__file__).resolve().parents[1] / "conf"
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended: not a success
T = TypeVar("T")
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(#\s?(?P<comment>.*))?$")
_COMMENT = re.compile(r"^(?P<indent> *)#\s?(?P<text>.*)$")


def conf_value(name: str, key: str) -> object:
    """A default of conf/<name>.yaml (e.g. conf_value('data/carvana', 'root')): tools take their defaults from the
    one file that states them."""
    return OmegaConf.select(OmegaConf.load(CONF / f"{name}.yaml"), key)


def rename_keys(words: list[str], renamed: dict[str, str]) -> list[str]:
    """Command-line words with renamed keys given their new names, one notice on stderr for each."""
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        bare = key.lstrip("+~")
        if eq and bare in renamed:
            print(f"warning: {bare}= is now {renamed[bare]}= ({bare}= goes in the next release)", file=sys.stderr)
            word = f"{key[: len(key) - len(bare)]}{renamed[bare]}={value}"
        out.append(word)
    return out


def compose(name: str, words: list[str], renamed: dict[str, str] | None = None) -> dict:
    """conf/<name>.yaml with the `key=value` words applied (Hydra's grammar) -> a plain dict. A word that is not
    key=value, an unknown key, or a value of another type than the key's default is a CarvanaError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    words = rename_keys(words, renamed or {})
    bad = [word for word in words if "=" not in word]
    if bad:
        raise CarvanaError(f"'{bad[0]}' is not key=value: see --help")
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra_compose(config_name=name, overrides=words)
    except HydraException as err:
        unknown = re.search(r"Key '([^']+)' is not in struct", f"{err} {err.__cause__}")
        if unknown:
            keys = ", ".join(k for k in defaults if k not in ("defaults", "hydra"))
            raise CarvanaError(f"unknown key '{unknown[1]}': choose from {keys} (see --help)") from None
        raise CarvanaError(f"cannot read the command line: {str(err).splitlines()[0]}") from None
    values = OmegaConf.to_container(cfg, resolve=True)
    for key, default in defaults.items():
        check_type(key, values.get(key), default)
    return values


def check_type(key: str, value: object, default: object) -> None:
    """Refuse a value of another kind than the key's default (an int for an int, a number for a float...)."""
    kind = type(default)
    if default is None or value is None or kind not in _KINDS:
        return
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise CarvanaError(f"{key}={value} is not {_KINDS[kind]}")


def check_threshold(threshold: object, key: str = "threshold") -> float:
    """A probability cut strictly inside (0, 1), else a CarvanaError naming the key: at 0 or 1 every pixel (or none)
    would be car, and the submission would be silently empty or full."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise CarvanaError(f"{key}={threshold} is a probability: choose a value strictly between 0 and 1 (e.g. 0.5)")
    return float(threshold)


def check_at_least(cfg: dict, limits: dict[str, float], nullable: tuple[str, ...] = ()) -> None:
    """Each dotted key of `limits` (e.g. 'data.batch_size') in the plain settings `cfg` no less than its least: an
    integer where the least is one, any number where it is a float; a key of `nullable` may also be null. Else a
    CarvanaError naming the key."""
    for key, least in limits.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value is None and key in nullable:
            continue
        kind, what = (int, "an integer") if isinstance(least, int) else ((int, float), "a number")
        if isinstance(value, bool) or not isinstance(value, kind) or value < least:
            raise CarvanaError(f"{key}={value} must be {what} >= {least}")


def help_text(name: str, command: str, groups: dict[str, str] | None = None) -> str:
    """--help of `command` (e.g. `python predict.py`) from conf/<name>.yaml: a usage line, its opening comment (what
    it does, the common commands), then every key with its default and its comment; `groups` adds the keys of a
    group's file under a prefix (e.g. {'data': 'data/carvana'}), and the options of every config group of the
    defaults list."""
    text = (CONF / f"{name}.yaml").read_text()
    intro = []
    for line in text.splitlines():
        match = _COMMENT.match(line)
        if not match:
            break
        intro.append(match["text"])
    usage = f"usage: {command} [key=value ...]" + ("  (-m key=a,b,...: one run each)" if name == "config" else "")
    out = [usage, *intro, "", "Keys (key=value: the default, then what it means):", *describe(CONF / f"{name}.yaml")]
    for prefix, file in (groups or {}).items():
        out += describe_group(CONF / f"{file}.yaml", prefix)
    group_dirs = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    chosen = [g for g in group_dirs if re.search(rf"^\s*- (optional )?(override /)?{g}:", text, re.MULTILINE)]
    if chosen:
        out += ["", "Groups (group=option):"]
        out += [f"  {g}: {' | '.join(sorted(f.stem for f in (CONF / g).glob('*.yaml')))}" for g in chosen]
    return "\n".join(out)


def comments(lines: list[str]) -> dict[str, str]:
    """The comment of each key of a YAML file's lines (nested keys dotted): its own, the indented comment lines
    under it, and the comment lines just above it."""
    found, path, above, last = {}, [], [], None
    for line in lines:
        match = _LINE.match(line)
        if match:
            depth = len(match["indent"]) // 2
            path = path[:depth] + [match["key"]]
            last = ".".join(path)
            found[last] = " ".join([*above, match["comment"] or ""]).strip()
            above = []
            continue
        comment = _COMMENT.match(line)
        if comment and len(comment["indent"]) >= 16 and last:  # the comment column: the line above goes on
            found[last] = f"{found[last]} {comment['text'].strip()}".strip()
        elif comment and not line.startswith("# @package"):
            above.append(comment["text"].strip())
        elif not line.strip():
            above = []
    return found


def plain(value: object) -> str:
    """A config value as one types it on the command line: null, true, [1024, 1024]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {plain(v)}" for k, v in value.items()) + "}"
    return str(value)


def describe(path: Path, prefix: str = "") -> list[str]:
    """`  key=default  comment` for each leaf of a YAML file (nested keys dotted, under `prefix`); the defaults list
    and hydra's block are left out, and the opening comment of the file is the help's, not a key's."""
    lines = path.read_text().splitlines()
    while lines and (_COMMENT.match(lines[0]) or not lines[0].strip()):
        lines = lines[1:]
    notes = comments(lines)
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    out = []

    def walk(node: dict, keys: list[str]) -> None:
        for key, value in node.items():
            if not keys and key in ("defaults", "hydra"):
                continue
            dotted = ".".join([*keys, str(key)])
            if isinstance(value, dict) and value:
                if notes.get(dotted):
                    out.append(f"  {'.'.join(filter(None, [prefix, dotted]))}.*  {notes[dotted]}")
                walk(value, [*keys, str(key)])
                continue
            shown = plain(value)
            note = notes.get(dotted, "")
            out.append(f"  {'.'.join(filter(None, [prefix, dotted]))}={shown}  {note}".rstrip())

    walk(values, [])
    return out


def describe_group(path: Path, prefix: str) -> list[str]:
    """describe() of a group's file, then the keys it takes from the files of its own group that its defaults list
    names (data/folder.yaml: data/carvana.yaml's), each key once, with the file's own value."""
    out = describe(path, prefix)
    for parent in OmegaConf.load(path).get("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and (path.parent / f"{parent}.yaml").is_file():
            seen = {re.split(r"[=*]", line.strip(), maxsplit=1)[0].rstrip(".") for line in out}
            out += [line for line in describe(path.parent / f"{parent}.yaml", prefix)
                    if re.split(r"[=*]", line.strip(), maxsplit=1)[0].rstrip(".") not in seen]
    return out


def print_help(text: str) -> NoReturn:
    """Print `text` and exit 0, also when the reader stops early (`--help | head`), as Python's docs advise for
    SIGPIPE: no BrokenPipeError traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def entry_point(name: str, groups: dict[str, str] | None = None, renamed: dict[str, str] | None = None) -> None:
    """What train.py, predict.py and submit.py do before Hydra reads their command line: `-h`/`--help` prints the
    help of conf/<name>.yaml and exits 0 (Hydra's own: --hydra-help); renamed keys get their new names."""
    if any(word in ("-h", "--help") for word in sys.argv[1:]):
        print_help(help_text(name, f"python {Path(sys.argv[0]).name}", groups))
    sys.argv[1:] = rename_keys(sys.argv[1:], renamed or {})


def fail(line: str, status: int = 2) -> NoReturn:
    """`line` on stderr, then exit with `status` (2: an expected error, one the user fixes)."""
    print(line, file=sys.stderr, flush=True)
    sys.exit(status)


@contextlib.contextmanager
def expected_errors(refused: Callable[[], object] | None = None, stopped: tuple[type[Exception], ...] = (),
                    stop_line: str = "{}") -> Iterator[None]:
    """Every tool's and job's expected errors in the block as one line, no traceback: a CarvanaError is `error: ...`
    and exit status 2, after `refused()` (train.py: the folder of a run refused before any work removed); one of
    `stopped` (a job that SIGTERM ended: what it kept, how to go on) is `stop_line` and STOPPED_BY_SIGTERM."""
    try:
        yield
    except CarvanaError as err:
        if refused is not None:
            refused()
        fail(f"error: {err}")
    except stopped as err:  # (): none, a tool that is never stopped midway
        fail(stop_line.format(err), STOPPED_BY_SIGTERM)


def run_or_exit(argv: list[str], help_of: str, work: Callable[[list[str]], T], command: str | None = None) -> T:
    """`-h`/`--help` prints the help of conf/<help_of>.yaml for `command` (default: python -m carvana.<help_of>) and
    exits 0; a CarvanaError of `work(argv)` prints one `error:` line and exits 2 (expected_errors)."""
    if any(word in ("-h", "--help") for word in argv):
        print_help(help_text(help_of, command or f"python -m carvana.{help_of}"))
    with expected_errors():
        return work(argv)
