"""Against a real SLURM with accounting (sudo bash scripts/slurm-up.sh; .ci/run starts it): the folds as SLURM jobs
through hydra/launcher=slurm (hydra-submitit-launcher as it is), both requeued mid-run (fold 0 by submitit's own
timeout signal, fold 1 by `scontrol requeue`); DDP training and prediction over two srun tasks; a rank killed
mid-epoch; jobs that fail. Tiny photos (64x96), one or two epochs, on CPU with gloo.

The tests marked `slurm` skip, with the reason, when no SLURM answers here; the summary then says so loudly
(conftest.py). The bad inputs that need no SLURM (no sbatch, no submitit, no sacct, allocation checks) run everywhere.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import REPO, parse_result, train_args
from omegaconf import OmegaConf

from carvana import CarvanaError
from carvana.predict.shards import scan_shard
from carvana.slurm import SlurmSweep, check_allocation, use_allocated_cpus

SRUN_TIMEOUT_S = 300
THREADS = torch.get_num_threads()  # this process's, put back after the tests that change it


def slurm_problem() -> str:
    """Why the tests cannot use a SLURM here, or ''."""
    for tool in ("sbatch", "srun", "squeue", "scontrol", "sacct"):
        if shutil.which(tool) is None:
            return f"{tool} is not on the PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20, check=False)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t %c"], capture_output=True, text=True, timeout=20, check=False)
        sacct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=20,
                               check=False)
    except subprocess.TimeoutExpired:
        return "scontrol, sinfo or sacct does not answer within 20 s"
    if "UP" not in ping.stdout:
        return f"slurmctld does not answer: {((ping.stdout + ping.stderr).strip() or 'no output').splitlines()[0]}"
    if sacct.returncode != 0:  # submitit watches its jobs with sacct
        return f"no accounting: sacct says {(sacct.stderr.strip() or 'nothing').splitlines()[0]!r}"
    usable = [line.split() for line in nodes.stdout.splitlines() if line.split()[0] in ("idle", "mix", "alloc")]
    if not any(int(cpus) >= 2 for _, cpus in usable):
        return f"no node up with 2 CPUs (sinfo: {nodes.stdout.strip()[:200]})"
    return ""


@pytest.fixture(scope="session")
def slurm() -> None:
    problem = slurm_problem()
    if problem:
        pytest.skip(f"no SLURM here: {problem} (start one: sudo bash scripts/slurm-up.sh)")


@pytest.fixture(scope="session")
def launcher(slurm) -> None:
    try:
        import hydra_plugins.hydra_submitit_launcher.submitit_launcher  # noqa: F401
        import submitit  # noqa: F401
    except ImportError as err:
        pytest.skip(f"hydra/launcher=slurm cannot run: {err} (pip install -e '.[slurm]')")


def tiny(root: Path, *extra: str) -> list[str]:
    """train.py overrides of a tiny CPU training on `root` (no run directory); `extra` replaces what it names."""
    keys = {word.split("=", 1)[0] for word in extra}
    args = train_args(root, Path("unused"), "model.bn_recalibration_batches=0")
    return [a for a in args if a.split("=", 1)[0] not in keys | {"hydra.run.dir"}] + list(extra)


def sweep_args(sweep_dir: Path, name: str, *words: str) -> list[str]:
    """train.py -m hydra/launcher=slurm on the single node: 1 CPU per task, 10 minutes per job."""
    return ["-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}", f"hydra.launcher.name={name}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", *words]


def srun(*words: str, name: str, label: bool = False) -> list[str]:
    """srun for two tasks on one node, as README-slurm.md says it."""
    return ["srun", "-N", "1", "--ntasks-per-node=2", "--kill-on-bad-exit=1", "-t", "10", f"--job-name={name}",
            *(["--label"] if label else []), *words]


def unique_name() -> str:
    return f"carvana-test-{uuid.uuid4().hex[:8]}"


def cancel(name: str) -> None:
    subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30, check=False)


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30,
                         check=False).stdout.split()
    return out[0] if out else ""


def run_dir(sweep: Path, fold: int) -> Path:
    """A fold's run folder in a sweep: fold<k>-job<n>."""
    found = [p for p in sweep.iterdir() if p.is_dir() and re.fullmatch(rf"fold{fold}-job\d+", p.name)]
    assert len(found) == 1, sorted(p.name for p in sweep.iterdir())
    return found[0]


def job_dirs(sweep: Path) -> dict[int, Path]:
    """{job number: the job's submitit folder (its SLURM logs)}: array tasks N_0, N_1 (N alone for a single job)."""
    dirs = sorted(p for p in (sweep / ".submitit").iterdir() if p.is_dir() and any(p.glob("*_submitted.pkl")))
    return {int(p.name.split("_")[1]) if "_" in p.name else 0: p for p in dirs}


def job_log(sweep: Path, num: int, task: int = 0) -> Path:
    """The SLURM log of job `num`'s task (stdout and stderr together: stderr_to_stdout)."""
    folder = job_dirs(sweep)[num]
    return folder / f"{folder.name}_{task}_log.out"


def wait_for_file(base: Path, pattern: str, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """The first file matching base/pattern, polled while `proc` runs."""
    start = time.monotonic()
    while not (found := sorted(base.glob(pattern))):
        assert proc.poll() is None, f"ended ({proc.returncode}) before {base / pattern} was written"
        assert time.monotonic() - start < timeout, f"no {base / pattern} after {timeout} s"
        time.sleep(0.1)
    return found[0]


def start_now_once_pending(job: str) -> None:
    """A requeued job is held back (Reason=BeginTime, about 2 minutes): start it as soon as it is PENDING."""
    for _ in range(240):
        if squeue_state(job) == "PENDING":
            break
        time.sleep(0.25)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True, capture_output=True,
                   timeout=30)


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def sweep(launcher, carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """python train.py -m hydra/launcher=slurm fold=0,1 (2 epochs). Once each fold's first epoch is saved, fold 0's
    job gets submitit's timeout signal (USR2, as SLURM sends it signal_delay_s before the time limit) and requeues
    itself; fold 1's job is requeued by SLURM (`scontrol requeue`, as a preemption does)."""
    base = tmp_path_factory.mktemp("slurm-sweep")
    sweep_dir, name = base / "sweep", unique_name()
    training = tiny(carvana_root, "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                    "trainer.limit_val_batches=2")
    args = sweep_args(sweep_dir, name, "fold=0,1", *training)
    out, err = base / "stdout", base / "stderr"
    start = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=stdout, stderr=stderr, text=True)
    jobs, states = {}, {}
    try:
        for fold in (0, 1):
            wait_for_file(sweep_dir, f"fold{fold}-*/checkpoints/last.ckpt", proc)
            jobs[fold] = job_dirs(sweep_dir)[fold].name
            states[fold] = squeue_state(jobs[fold])
            if fold == 0:
                subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True, capture_output=True, timeout=30)
            else:
                subprocess.run(["scontrol", "requeue", jobs[1]], check=True, capture_output=True, timeout=30)
        for fold in (0, 1):
            start_now_once_pending(jobs[fold])
        proc.wait(timeout=SRUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cancel(name)
    return {"dir": sweep_dir, "rc": proc.returncode, "stdout": out.read_text(), "stderr": err.read_text(),
            "jobs": jobs, "states": states, "seconds": time.monotonic() - start}


@pytest.mark.slurm
def test_two_fold_multirun_through_slurm(sweep: dict):
    """Both fold jobs finish; each run is in the sweep folder as a local multirun writes it; val_dice per fold in
    each job's SLURM log."""
    assert sweep["rc"] == 0, sweep["stderr"][-3000:]
    assert "Traceback" not in sweep["stderr"], sweep["stderr"][-3000:]
    assert (sweep["dir"] / "multirun.yaml").is_file()
    for fold in (0, 1):
        out = run_dir(sweep["dir"], fold)
        assert out.name == f"fold{fold}-job{fold}"
        lines = [line for line in job_log(sweep["dir"], fold).read_text().splitlines() if line.startswith("val_dice=")]
        assert len(lines) == 1, lines  # the run that was stopped printed none
        dice, ckpt = parse_result(lines[0])
        assert ckpt.parent == out / "checkpoints" and ckpt.is_file()
        assert 0.0 <= dice <= 1.0
        assert (out / "checkpoints" / "last.ckpt").is_file()
        assert f"fold={fold}" in (out / ".hydra" / "overrides.yaml").read_text()
        assert load_ckpt(out / "checkpoints" / "last.ckpt")["epoch"] == 1
    assert sorted(p.name for p in sweep["dir"].iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "fold0-job0", "fold1-job1"]


def check_resumed(sweep: dict, fold: int) -> str:
    """The fold's job ran twice, the second time from its own last.ckpt, and trained no batch twice -> its log."""
    assert sweep["states"][fold] == "RUNNING"
    assert sweep["rc"] == 0, sweep["stderr"][-3000:]
    out = run_dir(sweep["dir"], fold)
    log = job_log(sweep["dir"], fold).read_text()
    assert log.count("Starting with JobEnvironment") == 2, log[-3000:]  # the first start and the restart
    assert f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in log, log[-3000:]
    last = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 8)  # 2 epochs of 4 batches, none trained twice
    # the metrics log travels in the checkpoint: both epochs, once each
    metrics = pd.read_csv(out / "csv" / "metrics.csv")
    assert sorted(metrics["epoch"].dropna().astype(int).unique().tolist()) == [0, 1]
    assert metrics["val_dice"].notna().sum() == 2, metrics
    return log


@pytest.mark.slurm
def test_timed_out_fold_requeues_itself_and_resumes(sweep: dict):
    """submitit's own requeue: USR2 (SLURM sends it signal_delay_s before the time limit), the job requeues itself
    (max_num_timeout times at most) and its run goes on from last.ckpt in the same folder."""
    log = check_resumed(sweep, 0)
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log, log[-3000:]
    assert f"Requeued job {sweep['jobs'][0]} (2 remaining timeouts)" in log, log[-3000:]


@pytest.mark.slurm
def test_requeued_fold_resumes_from_last_ckpt(sweep: dict):
    """`scontrol requeue` of the running fold-1 job (a preemption): SLURM restarts it, it goes on from last.ckpt."""
    log = check_resumed(sweep, 1)
    assert "Caught signal SIGUSR2" not in log


@pytest.mark.slurm
def test_ddp_training_over_two_srun_tasks(slurm, carvana_root: Path, tmp_path: Path):
    """srun starts both ranks; Lightning reads them from SLURM's variables; one run folder, one set of checkpoints."""
    out, name = tmp_path / "run", unique_name()
    args = [*tiny(carvana_root, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=1",
                  "trainer.precision=32"), f"hydra.run.dir={out}"]
    try:
        proc = subprocess.run(srun(sys.executable, "train.py", *args, name=name, label=True), cwd=REPO,
                              capture_output=True, text=True, timeout=SRUN_TIMEOUT_S, check=False)
    finally:
        cancel(name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if "val_dice=" in line]
    assert len(lines) == 1 and lines[0].startswith("0: "), lines  # rank 0 (SLURM task 0) only
    _, ckpt = parse_result(lines[0][3:])
    # rank 1 is SLURM's task 1, in its own process (srun labels its lines "1:"), not a child of rank 0
    assert re.search(r"^1: .*GLOBAL_RANK: 1, MEMBER: 2/2", proc.stdout + proc.stderr, re.MULTILINE), proc.stderr[-3000:]
    assert not (out / "train_ddp_process_1.log").exists()  # Lightning's own launcher started no rank
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted([ckpt.name, "last.ckpt"])
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert load_ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 4  # 32 photos / 2 ranks / batch 4


@pytest.mark.slurm
def test_prediction_over_two_srun_tasks_writes_each_photo_once(sweep: dict, carvana_root: Path, tmp_path: Path):
    """15 photos over 2 SLURM tasks: 8 and 7, every PNG and every RLE row once; submit.py merges the shards."""
    photos = sorted((carvana_root / "test").glob("*.jpg"))[:15]
    (tmp_path / "in").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "in")
    ckpt = run_dir(sweep["dir"], 0) / "checkpoints" / "last.ckpt"
    out, name = tmp_path / "masks", unique_name()
    args = [f"ckpt={ckpt}", f"input_dir={tmp_path / 'in'}", f"output_dir={out}", "write=[png,rle]", "trainer=ddp",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32", "trainer.enable_progress_bar=false",
            "num_workers=0", f"hydra.run.dir={tmp_path / 'predict-run'}"]
    try:
        proc = subprocess.run(srun(sys.executable, "predict.py", *args, name=name), cwd=REPO, capture_output=True,
                              text=True, timeout=SRUN_TIMEOUT_S, check=False)
    finally:
        cancel(name)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("predicted=") == 1 and "predicted=15 skipped=0" in proc.stdout, proc.stdout[-2000:]
    assert sorted(p.stem for p in out.glob("*.png")) == [p.stem for p in photos]
    assert (out / "predict.json").is_file()
    shards = {path.name: [row.name for row in scan_shard(path)[0]] for path in sorted(out.glob("rle-rank*.csv"))}
    assert sorted(shards) == ["rle-rank0.csv", "rle-rank1.csv"]
    assert sorted(len(names) for names in shards.values()) == [7, 8]
    assert sorted(shards["rle-rank0.csv"] + shards["rle-rank1.csv"]) == [p.name for p in photos]  # once each
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"img": [p.name for p in photos], "rle_mask": "1 1"}).to_csv(sample, index=False)
    merged = subprocess.run([sys.executable, "submit.py", f"rle_dir={out}", f"sample_csv={sample}",
                             f"output={tmp_path / 'submission.csv.gz'}", "height=64", "width=96",
                             f"hydra.run.dir={tmp_path / 'submit-run'}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert merged.returncode == 0, merged.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "submission.csv.gz")
    assert rows["img"].tolist() == [p.name for p in photos]


def failed_job(stderr: str, sweep_dir: Path) -> tuple[str, Path, str]:
    """(submitit's error line, the SLURM log it names, the lines it quotes) from a sweep that stopped on a job."""
    match = re.search(r"^(submitit\.core\.utils\.UncompletedJobError: Job (\S+) .*?)$\n.*?^has not produced any "
                      r"output \(state: FAILED\)$\n^No error stream produced\. Look at stdout: (\S+)$\n-+\n(.*)",
                      stderr, re.MULTILINE | re.DOTALL)
    assert match, stderr[-3000:]
    log = Path(match[3])
    assert log.is_file() and log.is_relative_to(sweep_dir / ".submitit"), log
    assert log.name == f"{match[2]}_0_log.out"
    return match[1], log, match[4]


@pytest.mark.slurm
def test_rank_killed_mid_epoch_fails_the_job(launcher, carvana_root: Path, tmp_path: Path):
    """A fold job of 2 SLURM tasks (DDP): rank 1 killed during epoch 1, as the OOM killer does. srun ends rank 0 at
    once (srun_args: --kill-on-bad-exit=1), SLURM records the job FAILED, and the sweep stops naming the job's log,
    which says which task died: no hang."""
    sweep_dir, name = tmp_path / "sweep", unique_name()
    args = sweep_args(sweep_dir, name, "fold=0", "hydra.launcher.tasks_per_node=2",
                      *tiny(carvana_root, "trainer.max_epochs=50", "data.batch_size=2", "trainer.limit_val_batches=2",
                            "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32"))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=stdout, stderr=stderr)
    try:
        wait_for_file(sweep_dir, "fold0-*/checkpoints/last.ckpt", proc)  # epoch 0 done: epoch 1 runs
        job = job_dirs(sweep_dir)[0].name
        pids = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, timeout=30,
                              check=True).stdout.splitlines()[1:]
        # PID JOBID STEPID LOCALID GLOBALID: rank 1 is global task 1 of the job's step 0
        rank1 = [int(row.split()[0]) for row in pids if row.split()[2:5] == ["0", "1", "1"]]
        assert rank1, pids
        killed = time.monotonic()
        os.kill(rank1[0], signal.SIGKILL)
        proc.wait(timeout=180)
        ended_after = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cancel(name)
    assert proc.returncode == 1, err.read_text()[-3000:]
    error, log, quoted = failed_job(err.read_text(), sweep_dir)
    assert f"Job {job} (task: 0)" in error and log.name == f"{job}_0_log.out"
    assert re.search(r"^srun: error: \S+: task 1: Killed$", quoted, re.MULTILINE), quoted
    assert ended_after < 120, ended_after
    assert load_ckpt(run_dir(sweep_dir, 0) / "checkpoints" / "last.ckpt")["epoch"] < 49  # it died mid-run


@pytest.fixture(scope="module")
def failing_sweeps(launcher, carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two one-job sweeps that fail inside their job, run side by side: a key train.py refuses (trainer.num_nodes=2
    on one node: one line, exit 2) and a key the run raises on (+trainer.foo=1: Trainer's TypeError)."""
    cases = {"refused": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
                         "trainer.precision=32"],
             "raised": ["+trainer.foo=1"]}
    runs = {}
    for case, words in cases.items():
        base = tmp_path_factory.mktemp(f"slurm-{case}")
        name = unique_name()
        proc = subprocess.Popen([sys.executable, "train.py", *sweep_args(base / "sweep", name, "fold=0",
                                                                         *tiny(carvana_root, *words))],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[case] = (proc, base / "sweep", name)
    results = {}
    for case, (proc, sweep_dir, name) in runs.items():
        try:
            stdout, stderr = proc.communicate(timeout=SRUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            cancel(name)
        results[case] = {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "dir": sweep_dir}
    return results


@pytest.mark.slurm
def test_refused_key_in_a_job_names_its_log(failing_sweeps: dict):
    """train.py's one-line refusal inside the job: the sweep stops with submitit's error naming the job's log and
    quoting its last lines, the refusal among them."""
    run = failing_sweeps["refused"]
    assert run["rc"] == 1, run["stderr"][-3000:]
    _, log, quoted = failed_job(run["stderr"], run["dir"])
    assert "error: trainer.num_nodes=2, but this SLURM job step has 1 node(s)" in quoted, quoted
    assert "error: trainer.num_nodes=2" in log.read_text()
    assert "val_dice=" not in log.read_text()


@pytest.mark.slurm
def test_raised_in_a_job_names_its_log_with_the_traceback(failing_sweeps: dict):
    """An exception inside the run (Hydra catches it in the job): the job fails (carvana.slurm.SlurmSweep), its log
    holds the traceback, and the sweep stops with submitit's error naming that log, not with the bare exception."""
    run = failing_sweeps["raised"]
    assert run["rc"] == 1, run["stderr"][-3000:]
    _, log, quoted = failed_job(run["stderr"], run["dir"])
    assert "TypeError: Trainer.__init__() got an unexpected keyword argument 'foo'" in quoted, quoted
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "carvana/training/" in text, text[-3000:]
    assert re.search(r"srun: error: \S+: task 0: Exited with exit code 1", text), text[-3000:]


def launcher_args(root: Path, tmp_path: Path) -> list[str]:
    return ["-m", "hydra/launcher=slurm", "fold=0", f"hydra.sweep.dir={tmp_path / 'sweep'}", *tiny(root)]


def check_one_line(proc: subprocess.CompletedProcess, tmp_path: Path, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "sweep").exists()  # nothing submitted, no sweep folder


def test_slurm_launcher_without_sbatch(carvana_root: Path, tmp_path: Path):
    """No SLURM needed: a PATH without sbatch (submitit alone would say 'Could not detect "srun"' in a traceback)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([sys.executable, "train.py", *launcher_args(carvana_root, tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    check_one_line(proc, tmp_path, "sbatch", "PATH", "slurm-up.sh")


@pytest.mark.parametrize("module", ["submitit", "hydra_plugins.hydra_submitit_launcher"])
def test_slurm_launcher_without_submitit(carvana_root: Path, tmp_path: Path, module: str):
    """No SLURM needed: submitit or the Hydra plugin that cannot be imported (as when not installed) shadows the real
    one (Hydra alone would say "Unknown plugin class", or submitit's ImportError, in a traceback)."""
    fake = tmp_path / "fake" / Path(*module.split("."))
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError(\"No module named '{module}'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-W", "ignore", "train.py", *launcher_args(carvana_root, tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    check_one_line(proc, tmp_path, module, "pip install -e '.[slurm]'")


def test_slurm_launcher_warns_without_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture):
    """No SLURM needed: sbatch and srun found, sacct failing as on a SLURM without accounting: one warning line."""
    for tool, script in {"sbatch": "exit 0", "srun": "exit 0",
                         "sacct": "echo 'Slurm accounting storage is disabled' >&2; exit 1"}.items():
        (tmp_path / tool).write_text(f"#!/bin/sh\n{script}\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    SlurmSweep().on_multirun_start(config=OmegaConf.create({}))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: sacct fails (Slurm accounting storage is disabled)")


@pytest.mark.parametrize(
    ("env", "trainer", "words"),
    [
        ({"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1"}, {"num_nodes": 2, "devices": 2},
         ["trainer.num_nodes=2", "1 node(s)"]),
        ({"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1"}, {"num_nodes": 1, "devices": 2},
         ["trainer.devices=2", "--ntasks-per-node=1"]),
        ({"SLURM_NTASKS": "2", "SLURM_NNODES": "1"}, {"devices": 2}, ["--ntasks", "--ntasks-per-node=2"]),
    ],
    ids=["more_nodes_than_allocated", "devices_not_tasks_per_node", "bare_ntasks"],
)
def test_allocation_mismatch_is_one_line(monkeypatch: pytest.MonkeyPatch, env: dict, trainer: dict, words: list):
    """No SLURM needed: the checks train.py makes inside a job step, from SLURM's variables."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in {"SLURM_JOB_NAME": "train", **env}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(CarvanaError) as err:
        check_allocation(trainer)
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_allocation_matching_or_outside_slurm_passes(monkeypatch: pytest.MonkeyPatch):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    check_allocation({"num_nodes": 4, "devices": 8})  # not in SLURM: Lightning's own launcher
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning ignores SLURM in an interactive allocation
    check_allocation({"num_nodes": 1, "devices": 2})
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NNODES", "1")
    check_allocation({"num_nodes": 1, "devices": 2})
    check_allocation({"num_nodes": 1, "devices": "auto"})


@pytest.mark.parametrize(("env", "threads"), [
    ({"SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1"}, 1),
    ({"SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "2"}, None),
    ({"SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1"}, None),  # no --cpus-per-task
    ({"SLURM_JOB_NAME": "interactive", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1"}, None),
], ids=["cpus_per_task", "omp_num_threads_wins", "no_cpus_per_task", "interactive"])
def test_a_slurm_task_uses_its_own_cpus(monkeypatch: pytest.MonkeyPatch, env: dict, threads: int | None):
    """No SLURM needed: in a job step with --cpus-per-task, torch's threads are the task's CPUs, set once for
    Lightning too (OMP_NUM_THREADS); elsewhere nothing changes."""
    for key in [k for k in os.environ if k.startswith("SLURM_")] + ["OMP_NUM_THREADS"]:
        monkeypatch.setenv(key, "")  # recorded, so that monkeypatch puts back what the suite had
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    torch.set_num_threads(2)
    try:
        use_allocated_cpus()
        assert torch.get_num_threads() == (threads or 2)
        assert os.environ.get("OMP_NUM_THREADS") == env.get("OMP_NUM_THREADS", str(threads) if threads else None)
    finally:
        torch.set_num_threads(THREADS)


@pytest.mark.slurm
def test_a_task_given_one_cpu_runs_one_torch_thread(slurm):
    """srun -c 1 on a node of several CPUs, SLURM binding no CPU (task/none): one torch thread, not one per CPU of
    the node (without -c torch keeps its default)."""
    code = ("import torch; from carvana.slurm import use_allocated_cpus; use_allocated_cpus(); "
            "print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    seen = {}
    for cpus in ("1", None):
        name = unique_name()
        words = ["srun", "-N", "1", "-n", "1", *(["-c", cpus] if cpus else []), "-t", "5", f"--job-name={name}",
                 sys.executable, "-c", code]
        try:
            proc = subprocess.run(words, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        finally:
            cancel(name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        seen[cpus] = int(proc.stdout.split()[-1])
    assert seen["1"] == 1
    assert seen[None] > 1, seen  # torch's default on a node of 2 CPUs or more: what -c changes


def test_train_and_predict_fit_their_threads_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No SLURM needed: both jobs call use_allocated_cpus, after the allocation check and before any work."""
    from helpers import compose_train

    from carvana.cli import compose
    from carvana.predict import run as prediction
    from carvana.training import run as training

    class Called(Exception):
        pass

    def called() -> None:
        raise Called

    for module in (training, prediction):
        monkeypatch.setattr(module, "use_allocated_cpus", called)
    with pytest.raises(Called):
        training.train(compose_train("model.encoder_weights=null", "data.crop_size=null"), tmp_path / "run")
    with pytest.raises(Called):
        prediction.run(compose("predict", [f"ckpt={tmp_path / 'none.ckpt'}"]))
    assert not (tmp_path / "run").exists()
