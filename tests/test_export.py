"""python -m carvana.export and predict.py ckpt=model.onnx: parity with the checkpoint on a real photo, the same masks
through predict.py, the file's metadata, and bad input (tiny 64x96 networks, CPU)."""

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import REPO, max_diff, predict_args, predict_here, shard_rows, small_disk, write_checkpoint

from carvana.data.io import read_probs8, write_image
from carvana.data.rle import rle_decode
from carvana.export.__main__ import main
from carvana.export.exporter import MAX_MASK_DIFF, MAX_PROB_DIFF
from carvana.model.loading import load_module, read_checkpoint
from carvana.model.onnx import METADATA_KEY

REAL_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "test"
FIGURES = re.compile(r"max_prob_diff=(?P<prob>\S+) \(limit [^)]+\) mask_diff_share=(?P<mask>\S+) \(limit")


@pytest.fixture(scope="module")
def real_photos() -> list[Path]:
    photos = sorted(REAL_TEST.glob("*.jpg"))[:2]
    if len(photos) < 2:
        pytest.skip(f"the real test photos are not at {REAL_TEST}")
    return photos


@pytest.fixture(scope="module")
def tiny_ckpt(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mobilenet U-Net checkpoint with a 64x96 network input (photos resized to it), data.root the tiny set."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    return write_checkpoint(path, input_size=[64, 96], data={"root": str(carvana_root), "image_size": [64, 96]})


@pytest.fixture(scope="module")
def exported(tiny_ckpt: Path, real_photos: list[Path]) -> dict:
    """python -m carvana.export on the tiny checkpoint, checked on a real 1918x1280 photo, in a real process."""
    output = tiny_ckpt.parent / "tiny.onnx"
    proc = subprocess.run([sys.executable, "-m", "carvana.export", f"ckpt={tiny_ckpt}", f"output={output}",
                           f"photo={real_photos[0]}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    return {"proc": proc, "onnx": output}


def test_export_checks_parity_on_a_real_photo(exported: dict, tiny_ckpt: Path, real_photos: list[Path]):
    proc = exported["proc"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert str(real_photos[0]) in lines[-2] and lines[-1].startswith(f"onnx={exported['onnx']} image=Bx3x64x96 uint8")
    figures = FIGURES.search(lines[-2])
    assert figures, lines[-2]
    assert float(figures["prob"]) <= MAX_PROB_DIFF and float(figures["mask"]) <= MAX_MASK_DIFF
    assert sorted(p.name for p in tiny_ckpt.parent.iterdir()) == ["tiny.ckpt", "tiny.onnx"]  # no temporary left


def test_onnx_file_holds_the_network_with_a_dynamic_batch(exported: dict, tiny_ckpt: Path):
    model = onnx.load(str(exported["onnx"]))
    hparams = read_checkpoint(tiny_ckpt)["hyper_parameters"]
    import json

    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["input_size"] == [64, 96] and meta["encoder_name"] == hparams["encoder_name"]
    assert meta == json.loads(json.dumps(hparams))  # every hyperparameter, as JSON has them
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == "image" and image.type == "tensor(uint8)" and image.shape[1:] == [3, 64, 96]
    assert isinstance(image.shape[0], str)  # the batch axis is symbolic
    assert [o.name for o in session.get_outputs()] == ["logits", "probs"]
    x = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)  # batch 3: neither the example's 2 nor 1
    logits, probs = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        expected = load_module(tiny_ckpt)(x)
    assert logits.shape == probs.shape == (3, 1, 64, 96)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(probs, expected.sigmoid().numpy(), atol=1e-5)


def test_predict_from_onnx_writes_the_checkpoints_masks(exported: dict, tiny_ckpt: Path, real_photos: list[Path],
                                                          tmp_path: Path):
    """Real 1918x1280 photos, hflip TTA, PNGs and RLE shards: the ONNX file's masks are the checkpoint's."""
    (tmp_path / "in").mkdir()
    for photo in real_photos:
        (tmp_path / "in" / photo.name).symlink_to(photo)
    outputs = {}
    for name, model in (("ckpt", tiny_ckpt), ("onnx", exported["onnx"])):
        outputs[name] = tmp_path / name
        run = predict_here(predict_args(model, outputs[name], f"input_dir={tmp_path / 'in'}", "tta=hflip",
                                        "write=[png,rle]"))
        assert run.code == 0 and run.summary()["predicted"] == "2", run.out + run.err
    rows = {name: {img: rle for _, img, rle in shard_rows(out)} for name, out in outputs.items()}
    for photo in real_photos:
        pngs = [read_probs8(out / f"{photo.stem}.png") for out in outputs.values()]
        assert pngs[0].shape == (1280, 1918)
        assert max_diff(*pngs) <= 1  # 1e-3 of a probability is a quarter of one level of 255
        masks = [rle_decode(rows[name][photo.name], (1280, 1918)) for name in outputs]
        assert np.mean(masks[0] != masks[1]) <= MAX_MASK_DIFF
        assert 0 < masks[0].mean() < 1  # the masks are not trivially equal


def test_ensemble_of_onnx_and_checkpoint_of_one_geometry(exported: dict, tiny_ckpt: Path, carvana_root: Path,
                                                          tmp_path: Path):
    other = write_checkpoint(tmp_path / "other.ckpt", seed=1, input_size=[64, 96], data={"root": str(carvana_root)})
    outputs = {}
    for name, models in (("mixed", [exported["onnx"], other]), ("ckpts", [tiny_ckpt, other])):
        outputs[name] = tmp_path / name
        run = predict_here(predict_args(f"['{models[0]}','{models[1]}']", outputs[name]))
        assert run.code == 0 and run.summary()["predicted"] == "16", run.out + run.err  # the tiny set's test photos
    for png in sorted(outputs["ckpts"].glob("*.png")):
        assert max_diff(read_probs8(png), read_probs8(outputs["mixed"] / png.name)) <= 1


def _foreign_onnx(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    """A valid ONNX model (one Identity node) without this project's metadata."""
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, ["batch", 3, 64, 96])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.UINT8, ["batch", 3, 64, 96])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["image"], ["logits"])], "other", [x], [y])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "other.onnx")
    return [f"ckpt={tmp_path / 'other.onnx'}"], tmp_path / "other.onnx"


def _not_onnx(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    (tmp_path / "notes.onnx").write_text("not a model\n")
    return [f"ckpt={tmp_path / 'notes.onnx'}"], tmp_path / "notes.onnx"


def _onnx_with_ddp(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    return [f"ckpt={good}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32"], good


def _mixed_geometries(tmp_path: Path, good: Path) -> tuple[list[str], Path]:
    full = write_checkpoint(tmp_path / "full.ckpt")  # the photo padded: geometry "full", not 64x96
    return [f"ckpt=['{good}','{full}']"], good


@pytest.mark.parametrize("case", [_foreign_onnx, _not_onnx, _onnx_with_ddp, _mixed_geometries],
                         ids=lambda case: case.__name__.strip("_"))
def test_predict_refuses_bad_onnx_input_in_one_line(case, exported: dict, carvana_root: Path, tmp_path: Path):
    """Exit status 2, one `error:` line naming the file, no traceback, nothing written."""
    overrides, path = case(tmp_path, exported["onnx"])
    out = tmp_path / "pred"
    run = predict_here(predict_args(None, out, f"input_dir={carvana_root / 'test'}", *overrides))
    assert run.code == 2, run.out + run.err
    errors = run.errors()
    assert len(errors) == 1 and (str(path) in errors[0] or "geometry" in errors[0]), run.err
    assert "Traceback" not in run.err + run.out and "predicted=" not in run.out
    assert not out.exists() or not any(out.iterdir())


def _other_architecture(tmp_path: Path) -> tuple[list[str], str]:
    """A Lightning checkpoint of another model: no SegModule hyperparameters."""
    torch.save({"state_dict": torch.nn.Linear(2, 2).state_dict(), "hyper_parameters": {"num_classes": 10}},
               tmp_path / "other.ckpt")
    return [f"ckpt={tmp_path / 'other.ckpt'}", f"output={tmp_path / 'm.onnx'}"], "not a checkpoint of this project"


def _weights_of_another_network(tmp_path: Path) -> tuple[list[str], str]:
    """SegModule hyperparameters (mobilenet) over the weights of another encoder (resnet18)."""
    ckpt = read_checkpoint(write_checkpoint(tmp_path / "r.ckpt", encoder_name="resnet18", input_size=[64, 96]))
    ckpt["hyper_parameters"]["encoder_name"] = "mobilenet_v2"
    torch.save(ckpt, tmp_path / "other.ckpt")
    return [f"ckpt={tmp_path / 'other.ckpt'}", f"output={tmp_path / 'm.onnx'}"], "do not fit"


def _not_onnx_output(tmp_path: Path) -> tuple[list[str], str]:
    return [f"ckpt={write_checkpoint(tmp_path / 'a.ckpt')}", f"output={tmp_path / 'm.bin'}"], "*.onnx"


def _no_output(tmp_path: Path) -> tuple[list[str], str]:
    return [f"ckpt={tmp_path / 'a.ckpt'}"], "output= is required"


def _onnx_output_is_a_folder(tmp_path: Path) -> tuple[list[str], str]:
    """An existing folder named *.onnx: refused before the checkpoint is even read (ckpt= names no file)."""
    (tmp_path / "m.onnx").mkdir()
    return [f"ckpt={tmp_path / 'missing.ckpt'}", f"output={tmp_path / 'm.onnx'}"], "is a folder: name a file"


@pytest.mark.parametrize("case", [_other_architecture, _weights_of_another_network, _not_onnx_output, _no_output,
                                  _onnx_output_is_a_folder],
                         ids=lambda case: case.__name__.strip("_"))
def test_export_refuses_bad_input_in_one_line(case, tmp_path: Path, capsys: pytest.CaptureFixture):
    words, message = case(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(words)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not [p for p in tmp_path.glob("*.onnx") if p.is_file()] and not list(tmp_path.glob(".*"))


def test_export_failure_names_the_network_and_writes_nothing(tiny_ckpt: Path, real_photos: list[Path],
                                                             tmp_path: Path, capsys: pytest.CaptureFixture):
    failing = mock.patch("torch.onnx.export", side_effect=RuntimeError("unsupported operator aten::magic\nmore"))
    with failing, pytest.raises(SystemExit) as stop:
        main([f"ckpt={tiny_ckpt}", f"output={tmp_path / 'm.onnx'}", f"photo={real_photos[0]}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert "model.arch=unet with model.encoder_name=mobilenet_v2 cannot be exported" in err[0], err
    assert "aten::magic" in err[0] and not any(tmp_path.iterdir())


def test_export_that_differs_from_the_checkpoint_is_refused(tiny_ckpt: Path, real_photos: list[Path],
                                                            tmp_path: Path, capsys: pytest.CaptureFixture):
    """The parity check can fail: logits off by 0.1 (as a broken operator would make them) write nothing."""
    from carvana.export import exporter

    real = exporter.OnnxModel.forward
    shifted = mock.patch.object(exporter.OnnxModel, "forward", lambda self, image: real(self, image) + 0.1)
    with shifted, pytest.raises(SystemExit) as stop:
        main([f"ckpt={tiny_ckpt}", f"output={tmp_path / 'm.onnx'}", f"photo={real_photos[0]}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "max_prob_diff=" in err[0] and "nothing written" in err[0]
    assert not any(tmp_path.iterdir())


def test_export_into_a_read_only_folder_says_so(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A folder that cannot be written is named as that before any export, not as a network ONNX cannot take."""
    ckpt = write_checkpoint(tmp_path / "a.ckpt")
    with small_disk(tmp_path / "ro", read_only=True) as folder, pytest.raises(SystemExit) as stop:
        main([f"ckpt={ckpt}", f"output={folder / 'm.onnx'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert f"output={folder} cannot hold the output (Read-only file system)" in err[0] and "ONNX" not in err[0], err


@pytest.fixture(scope="module")
def exported_pad(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A full-size (padded) tiny model of 64x96 photos, exported after a check on a 70x100 photo, in this process."""
    folder = tmp_path_factory.mktemp("pad")
    ckpt = write_checkpoint(folder / "pad.ckpt", data={"image_size": [64, 96]})
    photo = folder / "check.png"
    write_image(photo, np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([f"ckpt={ckpt}", f"output={folder / 'pad.onnx'}", f"photo={photo}"])
    return {"ckpt": ckpt, "onnx": folder / "pad.onnx", "lines": out.getvalue().strip().splitlines()}


def test_full_size_export_takes_any_multiple_of_32_and_checks_two_sizes(exported_pad: dict):
    """Issue 37.3: the graph's height and width are dynamic (multiples of 32); parity was checked at two sizes."""
    lines = exported_pad["lines"]
    # the photo and its 3/4 copy; network inputs of 96x128 and 64x96
    assert " at 70x100, 52x75 (height x width): " in lines[-2] and FIGURES.search(lines[-2]), lines
    assert lines[-1].startswith(f"onnx={exported_pad['onnx']} image=Bx3xHxW uint8 (H, W: any multiples of 32)")
    (image,) = ort.InferenceSession(str(exported_pad["onnx"]), providers=["CPUExecutionProvider"]).get_inputs()
    assert image.shape[1] == 3 and all(isinstance(side, str) for side in image.shape[2:]), image.shape


def test_predict_from_a_full_size_onnx_file_on_photos_of_several_sizes(exported_pad: dict, tmp_path: Path):
    """Photos of three sizes, none the training size: the ONNX file's probabilities are the checkpoint's."""
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    for name, size in (("a", (64, 96)), ("b", (100, 70)), ("c", (130, 200))):
        write_image(tmp_path / "in" / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    for name in ("ckpt", "onnx"):
        run = predict_here(predict_args(exported_pad[name], tmp_path / name, f"input_dir={tmp_path / 'in'}"))
        assert run.code == 0 and run.summary()["predicted"] == "3", run.out + run.err
    for png in sorted((tmp_path / "ckpt").glob("*.png")):
        assert max_diff(read_probs8(png), read_probs8(tmp_path / "onnx" / png.name)) <= 1
    served_onnx_answers_every_size(exported_pad["onnx"], tmp_path)


def served_onnx_answers_every_size(onnx_file: Path, tmp_path: Path) -> None:
    """The service on one ONNX file answers each photo of tmp_path/in (three sizes) with predict.py's PNG of it."""
    pytest.importorskip("fastapi", reason="pip install -e '.[serve]' installs the service's packages")
    from helpers import decode, post, serving_here

    from carvana.cli import compose
    from carvana.predict.segmenter import Segmenter

    cfg = compose("serve", [f"ckpt={onnx_file}", "tta=none"])
    with serving_here(cfg, Segmenter.from_serve_config(cfg)) as url:
        for photo in sorted((tmp_path / "in").glob("*.png")):
            status, _, body = post(url, photo.read_bytes(), filename=photo.name)
            assert status == 200, body
            assert np.array_equal(decode(body), read_probs8(tmp_path / "onnx" / photo.name)), photo.name


def test_a_file_exported_for_one_size_is_refused_before_anything_is_written(exported_pad: dict, tmp_path: Path):
    """Files exported before dynamic sizes take one size: a photo of another is refused in one line naming it, and
    output_dir stays as it was (no predict.json, no empty rle file)."""
    model = onnx.load(str(exported_pad["onnx"]))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 64, 96  # the graph as a fixed-size export wrote it
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    rng = np.random.default_rng(2)
    (tmp_path / "in").mkdir()
    for name, size in (("a", (64, 96)), ("b", (100, 70))):
        write_image(tmp_path / "in" / f"{name}.png", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    run = predict_here(predict_args(old, out, f"input_dir={tmp_path / 'in'}", "write=[png,rle]"))
    assert run.code == 2, run.out + run.err
    expected = (f"error: {old} takes network inputs of 64x96 (height x width), not 128x96 (photo b.png, height x width "
                "100x70): export it again with python -m carvana.export (any size), or predict with its checkpoint")
    assert run.errors() == [expected]
    assert list(out.iterdir()) == []


def test_onnx_model_refuses_a_side_that_is_not_a_multiple_of_32(exported_pad: dict):
    from carvana import CarvanaError
    from carvana.model.onnx import OnnxModel

    model = OnnxModel(exported_pad["onnx"])
    assert model(torch.zeros((1, 3, 32, 160), dtype=torch.uint8)).shape == (1, 1, 32, 160)
    with pytest.raises(CarvanaError, match=r"takes network inputs of \(.+\)x\(.+\) \(height x width\), not 32x150 "
                                           r"\(these photos' input\)"):
        model(torch.zeros((1, 3, 32, 150), dtype=torch.uint8))
