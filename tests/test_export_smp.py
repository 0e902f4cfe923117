"""python -m carvana.export format=smp: a segmentation_models_pytorch folder that docs/export.md's lines run without
this project, with the checkpoint's logits; bad input refused in one line, nothing written (tiny networks, CPU)."""

import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from helpers import REPO, run_module, write_checkpoint

from carvana.data.io import read_image, write_image
from carvana.export import exporter
from carvana.export.__main__ import main as export_main
from carvana.files import HOST, is_temporary, remove_dead_temporaries
from carvana.model.loading import load_module, read_checkpoint

FILES = ["README.md", "carvana.json", "config.json", "model.safetensors"]
# per geometry: the checkpoint's hyperparameters and the (H, W) of the photo it is checked and used on
GEOMETRIES = {"resize": ({"input_size": [64, 96]}, (80, 120)), "pad": ({"data": {"image_size": [70, 100]}}, (70, 100))}


def docs_snippet() -> str:
    """The Python block of docs/export.md's segmentation_models_pytorch section: what a user copies."""
    section = (REPO / "docs" / "export.md").read_text().split("## segmentation_models_pytorch format", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny mobilenet U-Net checkpoint of one geometry and its photo, exported with format=smp in a real process."""
    hparams, size = GEOMETRIES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = write_checkpoint(folder / "tiny.ckpt", **hparams)
    photo = folder / "car.jpg"
    write_image(photo, np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8))
    proc = run_module("carvana.export", f"ckpt={ckpt}", "format=smp", f"output={folder / 'model_smp'}",
                      f"photo={photo}")
    return {"proc": proc, "ckpt": ckpt, "photo": photo, "dir": folder / "model_smp", "geometry": request.param}


def test_export_writes_the_smp_folder(exported: dict):
    proc = exported["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    match = re.fullmatch(r"parity on (\S+): max_logit_diff=(\S+) \(limit 1e-05\)", lines[-2])
    assert match and match[1] == str(exported["photo"]) and float(match[2]) <= exporter.MAX_LOGIT_DIFF, lines
    shape = "64x96" if exported["geometry"] == "resize" else "HxW"  # pad: any multiples of 32
    assert lines[-1].startswith(f"smp={exported['dir']} input=Bx3x{shape} "), lines
    assert sorted(p.name for p in exported["dir"].iterdir()) == FILES
    assert sorted(p.name for p in exported["dir"].parent.iterdir()) == ["car.jpg", "model_smp", "tiny.ckpt"]
    config = json.loads((exported["dir"] / "config.json").read_text())
    assert config["_model_class"] == "Unet" and config["encoder_name"] == "mobilenet_v2"
    assert config["encoder_weights"] is None  # smp.from_pretrained downloads nothing
    meta = json.loads((exported["dir"] / "carvana.json").read_text())
    hparams = json.loads(json.dumps(read_checkpoint(exported["ckpt"])["hyper_parameters"]))
    assert meta["hyper_parameters"] == hparams and meta["geometry"] == exported["geometry"]
    assert meta["mean"] == hparams["preprocessing"]["mean"] and meta["input_space"] == "RGB"
    assert meta["input_size"] == hparams["input_size"] and meta["threshold"] == hparams["threshold"]


def test_docs_lines_predict_the_checkpoints_logits_without_carvana(exported: dict, tmp_path: Path):
    """docs/export.md's lines, in a process that never imports carvana, on the photo at its own (non-square) size."""
    (tmp_path / "model_smp").symlink_to(exported["dir"])
    (tmp_path / "car.jpg").symlink_to(exported["photo"])
    script = (f"import sys\n{docs_snippet()}\nassert 'carvana' not in sys.modules, 'imported carvana'\n"
              "np.save('logits.npy', logits.numpy())\nnp.save('mask.npy', mask)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    module = load_module(exported["ckpt"])
    image = read_image(exported["photo"])
    net_input, _ = module.geometry.to_input(image)
    with torch.inference_mode():
        logits = module(torch.from_numpy(net_input.transpose(2, 0, 1).copy())[None])
        expected = module.geometry.to_full(logits, image.shape[:2]).numpy()
    theirs = np.load(tmp_path / "logits.npy")
    assert theirs.shape == expected.shape == (1, 1, *image.shape[:2])
    np.testing.assert_allclose(theirs, expected, atol=1e-5, rtol=0)
    assert np.array_equal(np.load(tmp_path / "mask.npy"), expected[0, 0] > 0)  # threshold 0.5: logits > 0
    assert expected.std() > 1e-3  # the logits vary over the photo: a constant could not tell the axes apart


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The resize geometry's checkpoint and photo, for the refusals (not exported)."""
    hparams, size = GEOMETRIES["resize"]
    folder = tmp_path_factory.mktemp("tiny")
    photo = folder / "car.jpg"
    write_image(photo, np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))
    return {"ckpt": write_checkpoint(folder / "tiny.ckpt", **hparams), "photo": photo}


def _run(words: list[str], capsys: pytest.CaptureFixture) -> str:
    """export_main(words) expected to refuse: its one error line."""
    with pytest.raises(SystemExit) as stop:
        export_main(words)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unknown_format_is_refused_in_one_line(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture):
    line = _run([f"ckpt={tiny['ckpt']}", f"output={tmp_path / 'out'}", "format=tflite"], capsys)
    assert line == "error: format=tflite: choose one of onnx, smp"
    assert not any(tmp_path.iterdir())


def test_simple_unet_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    ckpt = write_checkpoint(tmp_path / "s.ckpt", arch="simple_unet", encoder_name="simple_unet", input_size=[64, 96])
    line = _run([f"ckpt={ckpt}", f"output={tmp_path / 'out'}", "format=smp"], capsys)
    assert line == ("error: model.arch=simple_unet is not a segmentation_models_pytorch network: export it with "
                    "format=onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ckpt"]


def test_folder_of_other_files_is_refused_and_kept(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    line = _run([f"ckpt={tiny['ckpt']}", f"output={tmp_path / 'out'}", "format=smp"], capsys)
    assert f"output={tmp_path / 'out'} holds files that are not an earlier export's (notes.txt)" in line
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_earlier_export_with_other_files_beside_is_refused_and_kept(tiny: dict, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture):
    """Issue 38.4: an earlier export plus a NOTES.txt and a subfolder: replacing the folder would delete them."""
    out = tmp_path / "model_smp"
    words = [f"ckpt={tiny['ckpt']}", f"output={out}", "format=smp", f"photo={tiny['photo']}"]
    export_main(words)
    (out / "NOTES.txt").write_text("mine\n")
    (out / "runs").mkdir()
    (out / "runs" / "a.txt").write_text("mine too\n")
    before = sorted(p.name for p in out.rglob("*"))
    line = _run(words, capsys)
    assert line == (f"error: output={out} holds files that are not an earlier export's (NOTES.txt, runs/), which "
                    "replacing it would delete: choose a new or empty folder")
    assert sorted(p.name for p in out.rglob("*")) == before and (out / "NOTES.txt").read_text() == "mine\n"


def test_full_size_model_exports_on_a_photo_of_another_size(tmp_path: Path, capsys: pytest.CaptureFixture):
    """Issue 37.3: smp's format has no fixed size: a full-size model of 64x96 photos is checked on a 70x100 one."""
    ckpt = write_checkpoint(tmp_path / "pad.ckpt", data={"image_size": [64, 96]})
    write_image(tmp_path / "car.png", np.random.default_rng(2).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    export_main([f"ckpt={ckpt}", f"output={tmp_path / 'model_smp'}", "format=smp", f"photo={tmp_path / 'car.png'}"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith(f"smp={tmp_path / 'model_smp'} input=Bx3xHxW "), lines
    assert sorted(p.name for p in (tmp_path / "model_smp").iterdir()) == FILES


def test_an_export_that_differs_is_refused_and_the_earlier_one_kept(tiny: dict, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture):
    """The parity check can fail (carvana.json with a wrong std): the earlier export at output stays as it was; a
    good export then replaces it whole."""
    out = tmp_path / "model_smp"
    words = [f"ckpt={tiny['ckpt']}", f"output={out}", "format=smp", f"photo={tiny['photo']}"]
    export_main(words)
    (out / "README.md").write_text("the earlier export's card\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = exporter.smp_metadata
    wrong = mock.patch.object(exporter, "smp_metadata", lambda module: {**real(module), "std": [1.0, 1.0, 1.0]})
    with wrong:
        line = _run(words, capsys)
    assert "the smp folder's network differs from the checkpoint" in line and line.endswith("nothing written")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_smp"]  # no temporary left
    export_main(words)
    assert sorted(p.name for p in out.iterdir()) == FILES  # replaced whole: smp's own card again
    assert (out / "README.md").read_text() != "the earlier export's card\n"


def test_a_killed_exports_temporary_folder_is_removed(tmp_path: Path):
    """kill -9 during an export leaves atomic_dir's temporary folder: remove_dead_temporaries takes folders too."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f".model_smp.tmp-{HOST}-{dead.pid}"
    left.mkdir()
    (left / "config.json").write_text("{}\n")
    (tmp_path / "model_smp").mkdir()  # a finished export beside it stays
    assert is_temporary(left) and remove_dead_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model_smp"]
