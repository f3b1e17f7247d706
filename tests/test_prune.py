"""Narrowing the first level of a U-Net (sidraw.train.prune)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sidraw.train.prune import SETS, activation_stats, narrow  # noqa: E402
from sidraw.train.unet import UNet, UNetConfig  # noqa: E402


def _wide(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(channels=4, width=8, max_mult=8, residual=True, noise_map=True))
    with torch.no_grad():  # a residual head starts at zero; give it something to carry
        model.head.weight.normal_(0, 0.3)
    return model.eval()


def _data(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 4, 32, 32, generator=g), torch.tensor([[1e-3, 1e-4]] * 2))
            for _ in range(n)]


def _silence(model: UNet, dead: list[int]) -> None:
    """Zero what reads the ``dead`` channels of every first-level set."""
    w0 = model.config.widths[0]
    with torch.no_grad():
        model.enc[0][2].weight[:, dead] = 0
        model.enc[1][0].weight[:, dead] = 0
        model.dec[-1][0].weight[:, dead] = 0
        model.dec[-1][0].weight[:, [w0 + c for c in dead]] = 0
        model.dec[-1][2].weight[:, dead] = 0
        model.head.weight[:, dead] = 0


def test_dropping_unread_channels_keeps_the_output() -> None:
    wide = _wide()
    dead = [1, 4, 6]
    _silence(wide, dead)
    data = _data()
    small, keep = narrow(wide, activation_stats(wide, data), 5)
    assert small.config.widths == [5, 16, 32, 64, 64]
    for k in SETS:
        assert sorted(set(range(8)) - set(keep[k].tolist())) == dead
    x, n = data[0]
    with torch.no_grad():
        assert torch.allclose(small(x, n), wide(x, n), atol=1e-6)


def test_dropping_read_channels_changes_the_output() -> None:
    # The same cut on a network whose channels all matter is not free: the check above can fail.
    wide = _wide()
    data = _data()
    small, _ = narrow(wide, activation_stats(wide, data), 5)
    x, n = data[0]
    with torch.no_grad():
        assert not torch.allclose(small(x, n), wide(x, n), atol=1e-3)


def test_constant_channels_are_folded_into_the_bias() -> None:
    # A dropped channel that is the same everywhere carries only its mean: folding it into the
    # bias of the 1x1 head keeps the output exact; without the fold it would not be.
    wide = _wide(3)
    dead = [1, 4, 6]
    _silence(wide, dead)
    with torch.no_grad():
        wide.dec[-1][2].weight[1] = 0
        wide.dec[-1][2].bias[1] = 0.5  # dec_out channel 1: LeakyReLU(0.5) = 0.5 everywhere
        wide.head.weight[:, 1] = 0.7  # and the head reads it
    data = _data()
    stats = activation_stats(wide, data)
    assert float(stats["dec_out"].mean[1]) == pytest.approx(0.5)
    stats["dec_out"].mean_abs[1] = 0.0  # rank it with the dead ones, so that it is dropped
    small, keep = narrow(wide, stats, 5)
    assert 1 not in keep["dec_out"].tolist()
    x, n = data[0]
    with torch.no_grad():
        assert torch.allclose(small(x, n), wide(x, n), atol=1e-5)
        stats["dec_out"].mean[1] = 0.0
        unfolded, _ = narrow(wide, stats, 5)
        assert not torch.allclose(unfolded(x, n), wide(x, n), atol=1e-3)


def test_narrow_rejects_a_wider_first_level() -> None:
    wide = _wide()
    with pytest.raises(ValueError, match="first width"):
        narrow(wide, activation_stats(wide, _data(1)), 9)


def test_prune_command_writes_a_warm_start_in_the_card_shape(tmp_path) -> None:
    from test_train_model import _tiny_data

    from sidraw.train import loop
    from sidraw.train.cards import write_cards
    from sidraw.train.export import export_onnx
    from sidraw.train.onnx_io import load_checkpoint_weights
    from sidraw.train.prune import main

    _tiny_data(tmp_path / "data")
    cfg = loop.TrainConfig(width=8, max_mult=2, residual=True, noise_map=True, patch=16, batch=2)
    wide = UNet(cfg.unet())
    path = tmp_path / "wide.onnx"
    write_cards(tmp_path, "wide", "1", path, wide, cfg, {"step": 0, "elapsed_s": 0.0},
                export_onnx(wide, path))
    out = tmp_path / "narrow" / "init.pt"
    # --width says 24, the card says 8: the card's shape is the network's.
    main(["--init", str(path), "--first-width", "4", "--batches", "2", "--patch", "16", "--data",
          str(tmp_path / "data"), "--out", str(out)])
    stored = torch.load(out, weights_only=False)
    assert stored["config"]["first_width"] == 4 and stored["config"]["width"] == 8
    narrow_cfg = loop.TrainConfig(width=8, first_width=4, max_mult=2, residual=True,
                                  noise_map=True)
    assert load_checkpoint_weights(UNet(narrow_cfg.unet()), out)[1] == []
