"""SimpleUnet: logits at the input size on a non-square input, gradients, the `encoder` down path, size errors."""

import pytest
import torch

from carvana import CarvanaError
from carvana.model.simple_unet import SimpleUnet

SMALL = (4, 8, 16)  # three levels: sides divisible by 4, fast on CPU


def test_output_shape_non_square_default_widths():
    torch.manual_seed(0)
    net = SimpleUnet(in_channels=5, classes=1).eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 5, 64, 96))
    assert logits.shape == (2, 1, 64, 96)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # the two images differ, so must their logits (nothing collapsed to a constant)
    assert not torch.allclose(logits[0], logits[1])


def test_output_shape_several_classes():
    logits = SimpleUnet(in_channels=3, classes=2, widths=SMALL)(torch.randn(1, 3, 8, 12))
    assert logits.shape == (1, 2, 8, 12)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = SimpleUnet(in_channels=3, widths=SMALL)
    net(torch.randn(2, 3, 16, 24)).sigmoid().mean().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_encoder_holds_the_down_path():
    net = SimpleUnet(in_channels=3, widths=SMALL)
    assert len(net.encoder) == len(SMALL)
    encoder = {id(p) for p in net.encoder.parameters()}
    rest = {id(p) for name, p in net.named_parameters() if not name.startswith("encoder.")}
    assert encoder and not encoder & rest
    assert encoder | rest == {id(p) for p in net.parameters()}
    # the first conv reads the input channels, the deepest block outputs the widest features
    assert net.encoder[0][0].in_channels == 3
    assert net.encoder[-1][-3].out_channels == SMALL[-1]


def test_frozen_encoder_gets_no_gradient():
    net = SimpleUnet(in_channels=3, widths=SMALL)
    net.encoder.requires_grad_(False)
    net(torch.randn(1, 3, 16, 24)).mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.decoder.parameters())
    assert net.head.weight.grad is not None


@pytest.mark.parametrize("shape", [(1, 3, 64, 90), (1, 3, 60, 96)])
def test_size_not_divisible_names_the_divisor(shape: tuple[int, ...]):
    net = SimpleUnet(in_channels=3)
    with pytest.raises(CarvanaError, match=r"divisible by 16, got \d+x\d+"):
        net(torch.randn(*shape))


def test_wrong_channel_count_is_refused():
    with pytest.raises(CarvanaError, match=r"expects Bx3xHxW input, got \(1, 4, 16, 16\)"):
        SimpleUnet(in_channels=3, widths=SMALL)(torch.randn(1, 4, 16, 16))
