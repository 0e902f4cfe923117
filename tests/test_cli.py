"""The command line every tool shares: --help from the YAML comments (one source), key=value words, renamed keys."""

import importlib
import subprocess
import sys

import pytest
from helpers import REPO

from carvana.cli import help_text

TOOLS = {
    "train.py": ("config", ["  encoder:", "fold=", "data.crop_size=", "trainer.max_epochs="]),
    "predict.py": ("predict", ["ckpt=", "tta=", "output_dir="]),
    "submit.py": ("submit", ["probs_dir=", "rle_dir=", "threshold="]),
    "carvana.crops": ("crops", ["probs_dir=", "output="]),
    "carvana.folds": ("folds", ["output="]),
    "carvana.report": ("report", ["probs_dir=", "output_dir="]),
    "carvana.export": ("export", ["ckpt="]),
}


def _help(tool: str) -> subprocess.CompletedProcess:
    command = [sys.executable, tool] if tool.endswith(".py") else [sys.executable, "-m", tool]
    return subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("tool", ["train.py", "predict.py", "submit.py", "carvana.report"])
def test_help_starts_with_usage_and_the_common_commands(tool: str):
    proc = _help(tool)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    lines = proc.stdout.splitlines()
    shown = tool if tool.endswith(".py") else f"-m {tool}"
    assert lines[0].startswith(f"usage: python {shown} [key=value ...]"), lines[0]
    examples = [line for line in lines[1:12] if line.strip().startswith("python ")]
    assert len(examples) >= 2, lines[:12]
    for key in TOOLS[tool][1]:  # the keys, and the groups as group:
        assert any(line.startswith(key if key.startswith(" ") else f"  {key}") for line in lines), key


@pytest.mark.parametrize("tool", list(TOOLS))
def test_every_key_in_help_is_explained(tool: str):
    """Each `  key=default  explanation` line has its explanation (from the YAML's comments)."""
    name, _ = TOOLS[tool]
    groups = {"data": "data/carvana", "trainer": "trainer/auto"} if name == "config" else None  # as train.py shows
    command = f"python {tool}" if tool.endswith(".py") else f"python -m {tool}"
    text = help_text(name, command, groups)
    keys = [line for line in text.splitlines() if line.startswith("  ") and "=" in line.split()[0]]
    assert keys
    unexplained = [line.strip() for line in keys if len(line.strip().split(None, 1)) < 2]
    assert not unexplained, f"keys without a comment in conf/{name}.yaml or its groups: {unexplained}"


@pytest.mark.parametrize("tool", ["folds", "crops", "export", "report", "report.masks", "serve", "synthetic"])
def test_each_tool_is_its_packages_main_and_its_help_names_the_command(tool: str, capsys: pytest.CaptureFixture):
    """One pattern for tools: python -m carvana.X is carvana/X/__main__.py, and its --help names that command (the
    report's masks tool once said python -m carvana.masks)."""
    assert (REPO / "carvana" / tool.replace(".", "/") / "__main__.py").is_file()
    main = importlib.import_module(f"carvana.{tool}.__main__").main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m carvana.{tool} [key=value ...]")


@pytest.mark.parametrize("tool", ["train.py", "carvana.report"])
def test_help_into_a_closed_pipe_exits_0_without_a_traceback(tool: str):
    """`python train.py --help | head -1`: the reader has gone before the help is written."""
    command = [sys.executable, tool] if tool.endswith(".py") else [sys.executable, "-m", tool]
    proc = subprocess.Popen([*command, "--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in stderr, stderr


@pytest.mark.parametrize(("cfg", "message"), [
    ({"data": {"batch_size": 0, "num_workers": None}, "minutes": 0.5}, "data.batch_size=0 must be an integer >= 1"),
    ({"data": {"batch_size": 2.0, "num_workers": None}, "minutes": 0.5}, "data.batch_size=2.0 must be an integer"),
    ({"data": {"batch_size": True, "num_workers": None}, "minutes": 0.5}, "data.batch_size=True must be an integer"),
    ({"data": {"batch_size": 2, "num_workers": -1}, "minutes": 0.5}, "data.num_workers=-1 must be an integer >= 0"),
    ({"data": {"batch_size": 2, "num_workers": 0}, "minutes": 0.0}, "minutes=0.0 must be a number >= 0.001"),
])
def test_a_value_under_its_least_is_refused_naming_its_key(cfg: dict, message: str):
    from carvana import CarvanaError
    from carvana.cli import check_at_least

    limits = {"data.batch_size": 1, "data.num_workers": 0, "minutes": 1e-3}
    with pytest.raises(CarvanaError, match=f"^{message}"):
        check_at_least(cfg, limits, nullable=("data.num_workers",))
    fine = {"data": {"batch_size": 1, "num_workers": None}, "minutes": 1}  # an int where a number is asked: fine
    check_at_least(fine, limits, nullable=("data.num_workers",))


def test_expected_errors_are_one_line_and_their_status(capsys: pytest.CaptureFixture):
    """A CarvanaError: `error: ...`, exit 2, after the refusal's clean-up; a stop: its own line, 128 + SIGTERM."""
    from carvana import CarvanaError
    from carvana.cli import expected_errors

    class Stop(Exception):
        pass

    cleaned = []
    with pytest.raises(SystemExit) as ended, expected_errors(refused=lambda: cleaned.append(1)):
        raise CarvanaError("no photos")
    assert (ended.value.code, cleaned, capsys.readouterr().err) == (2, [1], "error: no photos\n")
    with pytest.raises(SystemExit) as ended, expected_errors(refused=lambda: cleaned.append(2), stopped=(Stop,),
                                                              stop_line="error: {}"):
        raise Stop("stopped by SIGTERM")
    assert (ended.value.code, cleaned, capsys.readouterr().err) == (143, [1], "error: stopped by SIGTERM\n")
    with pytest.raises(ValueError), expected_errors():  # not an expected error: its traceback stays
        raise ValueError("a bug")
