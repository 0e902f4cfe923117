"""Speed switches: model.channels_last and model.compile predict like the default, a missing compiler is one line,
trainer.precision=bf16-mixed keeps the Dice sums in float32, and the writer waits for the GPU's copy (CPU, tiny)."""

import os
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import segmentation_models_pytorch.losses.dice as smp_dice
import torch
from helpers import (
    REPO,
    TINY_SIZE,
    max_diff,
    predict_args,
    predict_here,
    tiny_module,
    train_args,
    train_here,
    write_checkpoint,
)

import carvana.model.losses
import carvana.model.module
from carvana.data.io import read_probs8
from carvana.model.module import SegModule
from carvana.predict.writer import HostProbs8, MaskWriter, copy_probs8, to_probs8


@pytest.fixture(scope="module")
def unet_ckpt(carvana_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed's simple U-Net (compiles in ~30 s on 2 CPU cores; mobilenet's U-Net takes ~2 min), full photo."""
    path = tmp_path_factory.mktemp("switches") / "unet.ckpt"
    return write_checkpoint(path, arch="simple_unet", encoder_name="simple_unet", data={"root": str(carvana_root)})


@pytest.mark.slow  # ~150 s on 2 busy CPU cores, most of it compiling
def test_channels_last_and_compile_predict_like_the_default(unet_ckpt: Path, carvana_root: Path, tmp_path: Path):
    torch._dynamo.reset()
    outputs = {}
    for name, words in (("default", []), ("channels_last", ["model.channels_last=true"]),
                        ("compile", ["model.compile=true"])):
        outputs[name] = tmp_path / name
        run = predict_here(predict_args(unet_ckpt, outputs[name], "tta=hflip", *words))
        assert run.code == 0 and run.summary()["predicted"] == "16", run.out + run.err
    pngs = sorted(outputs["default"].glob("*.png"))
    assert len(pngs) == 16
    for png in pngs:
        default = read_probs8(png)
        assert default.shape == TINY_SIZE and default.std() > 0
        for name in ("channels_last", "compile"):
            assert max_diff(read_probs8(outputs[name] / png.name), default) <= 1, (name, png.name)


def test_switches_keep_the_weights_names():
    """A checkpoint trained with the switches loads without them and the other way round."""
    plain = tiny_module(arch="simple_unet", encoder_name="simple_unet", encoder_weights=None)
    switched = tiny_module(arch="simple_unet", encoder_name="simple_unet", encoder_weights=None, channels_last=True,
                         compile=True)
    assert list(plain.state_dict()) == list(switched.state_dict())
    switched.load_state_dict(plain.state_dict())
    conv = next(m for m in switched.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1


def test_compile_without_its_compiler_is_one_line_in_training(carvana_root: Path, tmp_path: Path):
    """train.py model.compile=true where inductor finds no C++ compiler: exit 2, one line naming the switch, no
    checkpoint."""
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    out = tmp_path / "run"
    args = train_args(carvana_root, out, "encoder=simple_unet", "model.compile=true", "trainer.limit_train_batches=1")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(errors) == 1 and "model.compile=true" in errors[0] and "compiler" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not list(out.glob("checkpoints/*.ckpt"))


def test_compile_without_its_compiler_is_one_line_in_prediction(unet_ckpt: Path, tmp_path: Path):
    import torch._inductor.config as inductor

    torch._dynamo.reset()  # no graph compiled by an earlier test may serve
    with mock.patch.object(inductor.cpp, "cxx", ("/nonexistent/g++",)), \
            mock.patch.object(inductor, "force_disable_caches", True):
        run = predict_here(predict_args(unet_ckpt, tmp_path / "pred", "model.compile=true"))
    torch._dynamo.reset()
    assert run.code == 2 and len(run.errors()) == 1 and "model.compile=true" in run.errors()[0], run.out + run.err
    assert "Traceback" not in run.out + run.err and not list((tmp_path / "pred").glob("*.png"))


def test_bf16_mixed_training_keeps_the_dice_sums_in_float32(carvana_root: Path, tmp_path: Path):
    """trainer.precision=bf16-mixed on the CPU: the network's logits are bf16, every Dice sum float32."""
    seen = {"logits": set(), "loss_dice": set(), "val_dice": set()}
    forward, soft_dice = SegModule.forward, smp_dice.soft_dice_score
    dice_per_image = carvana.model.losses.dice_per_image

    def spy_forward(self, image):
        logits = forward(self, image)
        seen["logits"].add(logits.dtype)
        return logits

    def spy_soft_dice(*args, **kwargs):
        score = soft_dice(*args, **kwargs)
        seen["loss_dice"].add(score.dtype)
        return score

    def spy_dice(*args, **kwargs):
        dice = dice_per_image(*args, **kwargs)
        seen["val_dice"].add(dice.dtype)
        return dice

    with mock.patch.object(SegModule, "forward", spy_forward), \
            mock.patch.object(smp_dice, "soft_dice_score", spy_soft_dice), \
            mock.patch.object(carvana.model.module, "dice_per_image", spy_dice):
        ckpt = train_here(train_args(carvana_root, tmp_path / "run", "trainer.precision=bf16-mixed",
                                     "trainer.limit_train_batches=2", "trainer.limit_val_batches=2"))
    assert ckpt.is_file()
    # autocast was on in the steps (the test could see a bf16 sum); BatchNorm recalibration runs outside them
    assert torch.bfloat16 in seen["logits"], seen
    assert seen["loss_dice"] == {torch.float32} and seen["val_dice"] == {torch.float32}, seen


def test_copy_probs8_on_the_cpu_is_to_probs8():
    torch.manual_seed(0)
    probs = torch.rand(3, 1, 40, 56)
    copied = copy_probs8(probs.clone())
    assert copied.ready is None and torch.equal(copied.probs8, to_probs8(probs.clone()))


class _Event:
    """A CUDA event's stand-in: records which thread waited on it, and when."""

    def __init__(self):
        self.waited_in: list[str] = []

    def synchronize(self) -> None:
        self.waited_in.append(threading.current_thread().name)


def test_writer_waits_for_the_copy_in_its_threads(tmp_path: Path):
    """The predict loop hands the writer a batch still being copied: its threads wait on the event, then write."""
    probs8 = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, *TINY_SIZE), dtype=np.uint8))
    event = _Event()
    writer = MaskWriter(tmp_path, ["png"], threshold=0.5, threads=2)
    trainer = mock.Mock(global_rank=0)
    writer.setup(trainer, None, "predict")
    batch = {"name": ["a_01.jpg", "a_02.jpg"], "error": ["", ""]}
    writer.write_on_batch_end(trainer, None, HostProbs8(probs8, event), None, batch, 0)
    writer.on_predict_end(trainer, None)
    assert len(event.waited_in) == 2 and threading.current_thread().name not in event.waited_in
    for i, name in enumerate(("a_01", "a_02")):
        assert np.array_equal(read_probs8(tmp_path / f"{name}.png"), probs8[i].numpy())
