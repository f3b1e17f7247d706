"""U-Net shapes, ONNX export parity, warm start from ONNX, resumable training, model cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from PIL import Image  # noqa: E402

from sidraw.train import loop  # noqa: E402
from sidraw.train.export import export_onnx, model_from_checkpoint, sha256_file  # noqa: E402
from sidraw.train.onnx_io import load_onnx_weights  # noqa: E402
from sidraw.train.unet import UNet, UNetConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("channels", [4, 9])
def test_unet_keeps_shape(channels: int) -> None:
    model = UNet(UNetConfig(channels=channels, width=4, max_mult=4))
    x = torch.rand(2, channels, 32, 48)
    assert model(x).shape == x.shape


def test_depthwise_separable_block_exports_and_starts_at_the_identity(tmp_path: Path) -> None:
    """PMRID's block: same shapes, fewer parameters and multiply-adds, a residual network that
    starts at the identity, and an ONNX export that matches PyTorch."""
    from sidraw.train.unet import count_params, gflops_per_megapixel

    conv = UNetConfig(channels=4, width=8, max_mult=4, residual=True)
    dwsep = UNetConfig(channels=4, width=8, max_mult=4, residual=True, block="dwsep")
    model = UNet(dwsep).eval()
    x = torch.rand(1, 4, 32, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), x)
    assert count_params(model) < count_params(UNet(conv)) / 2
    assert gflops_per_megapixel(dwsep, 2) < gflops_per_megapixel(conv, 2) / 2
    torch.nn.init.normal_(model.head.weight, std=0.1)
    assert export_onnx(model, tmp_path / "d.onnx") <= 1e-4
    with pytest.raises(ValueError, match="unknown block"):
        UNet(UNetConfig(block="dense"))


def test_depthwise_separable_network_leaves_the_identity() -> None:
    """With PyTorch's default init the signal vanished through the depthwise stacks and the
    network never left its zero head (the loss stayed put for a whole 22-minute run)."""
    torch.manual_seed(0)
    x = torch.rand(4, 4, 64, 64) * 0.5
    y = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    noisy, noise = x + 0.1 * torch.randn_like(x), torch.full((4, 2), 0.001)
    model = UNet(UNetConfig(channels=4, width=16, max_mult=8, residual=True, noise_map=True,
                            block="dwsep"))
    opt = torch.optim.AdamW(model.parameters(), 3e-4)
    losses = []
    for _ in range(60):
        loss = (model(noisy, noise) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.99 * losses[0], losses[::10]


@pytest.mark.parametrize("kind, ratio", [("l1", 1.0), ("l2", 0.1), ("psnr", 10.0),
                                         ("log-l1", 10.0)])
def test_loss_weighs_each_patch_by_its_own_error(kind: str, ratio: float) -> None:
    """Two patches, one with a tenth of the other's error: the pixel losses pull on each pixel
    by its error (L1 alike, L2 ten times less on the clean one), the per-patch log losses pull
    ten times harder on the clean patch, so that every patch's dB count alike."""
    y = torch.rand(2, 4, 8, 8)
    sign = torch.where(torch.rand(2, 4, 8, 8) < 0.5, -1.0, 1.0)
    pred = (y + sign * torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)).requires_grad_()
    loss = loop.batch_loss(pred, y, kind)
    loss.backward()
    noisy, clean = (pred.grad[i].abs().mean().item() for i in (0, 1))  # type: ignore[union-attr]
    assert clean / noisy == pytest.approx(ratio, rel=1e-3)
    if kind == "psnr":
        assert loss.item() == pytest.approx(-(20.0 + 40.0) / 2, rel=1e-4)


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        loop.batch_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2), "ssim")


def test_export_parity_dynamic_size_and_warm_start(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=4, width=4, max_mult=4))
    path = tmp_path / "m.onnx"
    diff = export_onnx(model, path)
    assert diff <= 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    x = torch.rand(1, 4, 48, 80) * 2 - 1  # another size than the export's dummy
    got = sess.run(["output"], {"input": x.numpy()})[0]
    assert got.shape == (1, 4, 48, 80)
    # Warm start: a fresh model reads the initializers back and reproduces the outputs.
    fresh = UNet(UNetConfig(channels=4, width=4, max_mult=4)).eval()
    loaded, skipped = load_onnx_weights(fresh, path)
    assert not skipped and loaded
    with torch.no_grad():
        assert np.max(np.abs(fresh(x).numpy() - got)) <= 1e-4
    # Across CFAs only the first and last layers differ.
    xtrans = UNet(UNetConfig(channels=9, width=4, max_mult=4))
    _, skipped = load_onnx_weights(xtrans, path)
    assert set(skipped) == {"enc.0.0.weight", "head.weight", "head.bias"}


def _tiny_data(root: Path) -> None:
    folder = root / "clean" / "BSDS500"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["dataset\tfile\tsource_repo\tsource_path\tcommit\tbytes\twidth\theight\tlicence_note"]
    for i in range(10):
        img = (rng.uniform(0, 255, (8, 8, 3))).astype(np.uint8)
        Image.fromarray(img).resize((96, 96), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
        rows.append(f"BSDS500\t{i}.png\tx\tx\tx\t0\t96\t96\tx")
    (root / "clean" / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")


def test_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    _tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--width", "4", "--max-mult", "2", "--patch", "16", "--batch", "2", "--threads", "1",
            "--data", str(tmp_path / "data"), "--out", str(out)]
    loop.main([*args, "--steps", "2"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2
    trainer = loop.Trainer(loop.parse_args([*args, "--steps", "4"])[0], out, resume=True)
    assert trainer.step == 2
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    assert trainer.opt.state_dict()["state"]  # Adam moments restored
    loop.main([*args, "--steps", "4", "--patch", "32", "--resume"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4
    assert ckpt["config"]["patch_history"] == [[0, 16], [2, 32]]
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) == 2

    # Export writes the cards the inference loader reads.
    from sidraw.train.cards import write_cards

    model, cfg, info = model_from_checkpoint(out / "checkpoint.pt")
    onnx_path = tmp_path / "sidraw-bayer.onnx"
    diff = export_onnx(model, onnx_path)
    card = write_cards(tmp_path, "sidraw-bayer", "1", onnx_path, model, cfg, info, diff)
    stored = json.loads((tmp_path / "sidraw-bayer.json").read_text())
    assert stored == json.loads(json.dumps(card))
    assert stored["sha256"] == sha256_file(onnx_path)
    assert stored["channels"] == ["R", "G", "G", "B"] and stored["downsample"] == 16
    assert stored["input_name"] == "input" and stored["output_name"] == "output"
    assert stored["normalisation"]["input_clip"] == [-1, 1]
    assert (tmp_path / "sidraw-bayer.md").read_text().count(stored["sha256"]) >= 1
    assert stored["training"]["steps_total"] == 4 and len(stored["training"]["runs"]) == 1

    # A warm-started run keeps the runs behind the weights it started from.
    second = write_cards(
        tmp_path, "sidraw-bayer", "1", onnx_path, model, cfg, info, diff, previous=stored
    )
    assert [r["steps"] for r in second["training"]["runs"]] == [4, 4]
    assert second["training"]["steps_total"] == 8
    assert "All runs behind these weights: 8 steps" in (tmp_path / "sidraw-bayer.md").read_text()

    # The evaluation table goes into both cards; a stale sha256 is refused.
    from sidraw.train.cards import update_validation

    summary = {"sets": {"A7S2 x100": {"ratio": 100.0, "noise": "a7s2", "cases": 1,
                                      "naive": {"srgb_psnr": 20.0, "srgb_ssim": 0.4,
                                                "raw_psnr": 30.0}}}}
    update_validation(onnx_path, summary)
    assert json.loads((tmp_path / "sidraw-bayer.json").read_text())["validation"] == summary
    assert "| A7S2 x100 | naive x ratio | 20.00 |" in (tmp_path / "sidraw-bayer.md").read_text()
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        update_validation(onnx_path, summary)


def test_residual_noise_conditioned_unet_starts_at_the_identity() -> None:
    torch.manual_seed(1)
    model = UNet(UNetConfig(channels=4, width=4, max_mult=4, residual=True, noise_map=True))
    x = torch.rand(2, 4, 32, 48) * 2 - 1
    noise = torch.tensor([[0.02, 0.004], [0.1, 0.01]])
    assert torch.equal(model(x, noise), x)
    with pytest.raises(ValueError, match="noise"):
        model(x)
    # The map is the expected noise std of every value.
    from sidraw.train.unet import noise_std

    std = noise_std(x, noise)
    assert torch.allclose(std[1], torch.sqrt(0.1 * torch.relu(x[1]) + 0.01))
    # The noise input changes the output once the network has learned anything.
    with torch.no_grad():
        model.head.weight.normal_()
    assert not torch.allclose(model(x, noise), model(x, noise * 4))


def _exported_noise_model(folder: Path, name: str, seed: int) -> tuple[UNet, Path, float]:
    """A small noise-conditioned residual U-Net (head not zero), exported with its cards:
    (model, ONNX path, parity)."""
    from sidraw.train.cards import write_cards
    from sidraw.train.loop import TrainConfig

    torch.manual_seed(seed)
    cfg = TrainConfig(width=4, max_mult=4, residual=True, noise_map=True)
    model = UNet(cfg.unet())
    with torch.no_grad():
        model.head.weight.normal_(std=0.1)
    path = folder / f"{name}.onnx"
    diff = export_onnx(model, path)
    write_cards(folder, name, "1", path, model, cfg, {"step": 0, "elapsed_s": 0.0}, diff)
    return model, path, diff


def test_noise_conditioned_export_and_inference(tmp_path: Path) -> None:
    from sidraw.model import Network, load_card

    model, path, diff = _exported_noise_model(tmp_path, "nm", seed=2)
    assert diff <= 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", "noise"]
    card = load_card(tmp_path / "nm.json")
    assert card.noise_input == "noise"
    net = Network(card, "cpu", threads=1)
    x = (np.random.default_rng(0).uniform(-1, 1, (1, 4, 32, 32))).astype(np.float32)
    quiet, loud = np.array([[1e-4, 1e-6]], np.float32), np.array([[0.1, 0.01]], np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x), torch.from_numpy(quiet)).numpy()
    assert np.max(np.abs(net(x, noise=quiet) - ref)) <= 1e-4
    assert not np.allclose(net(x, noise=quiet), net(x, noise=loud))
    from sidraw.errors import ModelError

    with pytest.raises(ModelError, match="noise estimate"):
        net(x)


def test_int8_variant_validation_is_compared_case_for_case() -> None:
    from sidraw.train.cards import variant_section, variant_validation

    def row(srgb: float, raw: float) -> dict:
        return {"srgb_psnr": srgb, "srgb_ssim": 0.5, "raw_psnr": raw, "below_naive_srgb": 0,
                "below_naive_raw": 0, "min_raw_psnr": raw - 3, "colour_bias": 0.001,
                "highlight_tint": 0.002}

    naive = {"srgb_psnr": 15.0, "srgb_ssim": 0.2, "raw_psnr": 24.0}
    own = {"sets": {
        "K=0.1 x100": {"cases": 4, "naive": naive, "model": row(32.0, 42.0)},
        "K=6 x300": {"cases": 4, "naive": naive, "model": row(21.0, 28.8)},
    }, "sweep": {"x100": {"bm3d": row(25.0, 35.0), "model": row(26.5, 36.0)}}}
    int8 = {"sets": {
        "K=0.1 x100": {"cases": 4, "naive": naive, "model": row(31.8, 41.9)},
        "K=6 x300": {"cases": 4, "naive": naive, "model": row(21.01, 28.78)},
    }, "sweep": {"x100": {"bm3d": row(25.0, 35.0), "model": row(26.25, 35.9)},
                 "x250": {"bm3d": row(21.0, 31.0), "model": row(22.0, 32.0)}}}
    got = variant_validation({"validation": own}, int8)
    assert got["psnr_drop_db"] == pytest.approx(0.2) and got["raw_psnr_drop_db"] == 0.1
    assert list(got["sweep"]) == ["x100"]  # only ratios the card's own evaluation holds
    card = {"validation": own, "variants": {"int8": {"file": "m.int8.onnx", "sha256": "ab",
                                                     **got}}}
    text = "\n".join(variant_section(card))
    assert "| K=0.1 x100 | 32.00 / 42.00 | 31.80 / 41.90 | -0.20 / -0.10 |" in text
    assert "| x100 | 25.00 / 0.500 | 26.50 / 0.500 | 26.25 / 0.500 | +1.25 dB / +0.000 |" in text
    assert "so it does not." in text  # 0.2 dB: auto keeps float32
    # Float rounding of the renders moves the naive figures' 4th decimal: the same cases.
    rounded = json.loads(json.dumps(int8))
    rounded["sets"]["K=6 x300"]["naive"]["srgb_psnr"] += 1e-4
    assert variant_validation({"validation": own}, rounded)["psnr_drop_db"] == got["psnr_drop_db"]
    # Other noise draws (the naive rows differ) are not a comparison.
    other = json.loads(json.dumps(int8))
    other["sets"]["K=6 x300"]["naive"]["raw_psnr"] = 24.1
    with pytest.raises(ValueError, match="K=6 x300"):
        variant_validation({"validation": own}, other)


def test_exported_network_records_its_staged_context(tmp_path: Path) -> None:
    from sidraw.model import Network, load_card
    from sidraw.staged import run_staged
    from sidraw.tiling import run_whole
    from sidraw.train.stage_card import stage_card

    _exported_noise_model(tmp_path, "st", seed=3)
    staged = stage_card(tmp_path / "st.json")
    # The reach of two levels of 3x3 convolutions (2 + 4 pixels), on the stages' grid of 4.
    assert staged["level"] == 2 and staged["context"] == 8
    assert "Staged inference" in (tmp_path / "st.md").read_text()
    card = load_card(tmp_path / "st.json")
    assert (card.staged_level, card.staged_context) == (2, 8)
    noise = np.array([[0.05, 1e-3]], np.float32)
    net = Network(card, "cpu", threads=1)
    stages = net.stages(noise)
    assert stages is not None
    x = np.random.default_rng(1).uniform(0, 0.5, (120, 150, 4)).astype(np.float32)
    whole = run_whole(x, lambda b: net(b, noise=noise))
    assert np.abs(run_staged(x, stages, tile=64) - whole).max() <= 1e-5 * np.abs(whole).max()


def test_narrow_first_level_shapes_and_cost() -> None:
    from sidraw.train.unet import count_params, gflops_per_megapixel

    wide = UNetConfig(channels=4, width=24, max_mult=8, residual=True, noise_map=True)
    narrow = UNetConfig(channels=4, width=24, max_mult=8, residual=True, noise_map=True,
                        first_width=16)
    assert narrow.widths == [16, 48, 96, 192, 192] and wide.widths[0] == 24
    model = UNet(narrow)
    assert model.head.in_channels == 16 and model.enc[1][0].in_channels == 16
    assert model.dec[-1][0].in_channels == 32
    assert count_params(model) < count_params(UNet(wide))
    assert gflops_per_megapixel(narrow, 2) < gflops_per_megapixel(wide, 2)


def test_narrow_first_level_trains_resumes_and_runs_staged(tmp_path: Path) -> None:
    from sidraw.model import Network, load_card
    from sidraw.staged import run_staged
    from sidraw.tiling import run_whole
    from sidraw.train.cards import write_cards
    from sidraw.train.stage_card import stage_card

    _tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--width", "8", "--first-width", "4", "--max-mult", "2", "--residual", "--noise-map",
            "--patch", "16", "--batch", "2", "--threads", "1", "--workers", "0",
            "--data", str(tmp_path / "data"), "--out", str(out)]
    loop.main([*args, "--steps", "1"])
    # Resuming takes the shape from the checkpoint, whatever the command line says.
    resumed = [a if a != "4" else "8" for a in args]
    loop.main([*resumed, "--steps", "2", "--resume"])
    model, cfg, info = model_from_checkpoint(out / "checkpoint.pt")
    assert cfg.first_width == 4 and model.config.widths[:2] == [4, 16] and info["step"] == 2
    with torch.no_grad():
        model.head.weight.normal_(std=0.1)
    path = tmp_path / "nf.onnx"
    diff = export_onnx(model, path)
    card = write_cards(tmp_path, "nf", "1", path, model, cfg, info, diff)
    assert card["architecture"]["first_width"] == 4
    assert card["architecture"]["widths"][:2] == [4, 16]
    assert "First level narrowed to 4 channels" in (tmp_path / "nf.md").read_text()
    # A warm start from the card's shape loads every tensor; the default shape would not.
    shaped = loop.with_shape_of(loop.TrainConfig(), card["architecture"])
    assert (shaped.width, shaped.first_width, shaped.max_mult) == (8, 4, 2)
    assert load_onnx_weights(UNet(shaped.unet()), path)[1] == []
    default = loop.TrainConfig(width=8, max_mult=2, residual=True, noise_map=True)
    assert load_onnx_weights(UNet(default.unet()), path)[1] != []
    stage_card(tmp_path / "nf.json")
    net = Network(load_card(tmp_path / "nf.json"), "cpu", threads=1)
    noise = np.array([[0.05, 1e-3]], np.float32)
    stages = net.stages(noise)
    assert stages is not None
    x = np.random.default_rng(2).uniform(0, 0.5, (80, 100, 4)).astype(np.float32)
    whole = run_whole(x, lambda b: net(b, noise=noise))
    assert np.abs(run_staged(x, stages, tile=32) - whole).max() <= 1e-5 * np.abs(whole).max()


def test_train_command_warm_starts_in_the_shape_of_the_init_card(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sidraw.cli import app
    from sidraw.train.cards import write_cards

    _tiny_data(tmp_path / "data")
    cfg = loop.TrainConfig(width=8, first_width=4, max_mult=2, residual=True, noise_map=True)
    model = UNet(cfg.unet())
    path = tmp_path / "small.onnx"
    write_cards(tmp_path, "small", "1", path, model, cfg, {"step": 0, "elapsed_s": 0.0},
                export_onnx(model, path))
    out = tmp_path / "run"
    # The command's default shape (width 24) is not the card's: the card wins.
    res = CliRunner().invoke(app, [
        "train", "--init", str(path), "--data", str(tmp_path / "data"), "--out", str(out),
        "--patch", "16", "--batch", "2", "--steps", "1", "--threads", "1", "--workers", "0",
    ])
    assert res.exit_code == 0, res.output
    assert "skipped []" in res.output
    stored = torch.load(out / "checkpoint.pt", weights_only=False)["config"]
    assert (stored["width"], stored["first_width"], stored["max_mult"]) == (8, 4, 2)


def test_distillation_term_measures_the_distance_to_the_teacher() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 4, 8, 8, generator=g)
    t = (y + 0.05 * torch.randn(3, 4, 8, 8, generator=g)).clamp(0, 1)
    assert float(loop.distill_loss(t, t, y)) == 0.0
    near, far = t + 0.01, t + 0.05
    assert 0 < float(loop.distill_loss(near, t, y)) < float(loop.distill_loss(far, t, y))


def test_training_distils_from_a_narrower_or_wider_teacher(tmp_path: Path) -> None:
    from sidraw.train.cards import write_cards

    _tiny_data(tmp_path / "data")
    tcfg = loop.TrainConfig(width=8, max_mult=2, residual=True, noise_map=True)
    teacher = UNet(tcfg.unet())
    with torch.no_grad():  # a fresh residual network is the identity, as the student is
        teacher.head.weight.normal_(std=0.3)
    path = tmp_path / "teacher.onnx"
    write_cards(tmp_path, "teacher", "1", path, teacher, tcfg, {"step": 0, "elapsed_s": 0.0},
                export_onnx(teacher, path))
    out = tmp_path / "run"
    args = ["--width", "8", "--first-width", "4", "--max-mult", "2", "--residual", "--noise-map",
            "--patch", "16", "--batch", "2", "--threads", "1", "--workers", "0", "--steps", "1",
            "--data", str(tmp_path / "data"), "--out", str(out), "--teacher", str(path),
            "--distill", "1"]
    cfg = loop.parse_args(args)[0]
    trainer = loop.Trainer(cfg, out)
    assert trainer.teacher is not None and trainer.teacher.config.widths[0] == 8
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    x = torch.rand(2, 4, 16, 16)
    noise = torch.full((2, 2), 1e-3)
    y = torch.rand(2, 4, 16, 16)
    plain = loop.Trainer(loop.parse_args(args[:-4])[0], tmp_path / "plain")
    plain.model.load_state_dict(trainer.model.state_dict())
    torch.manual_seed(0)
    with_teacher = trainer.train_step(x, y, noise)
    torch.manual_seed(0)
    without = plain.train_step(x, y, noise)
    assert with_teacher > without  # the distance to the teacher is added
    loop.main(args)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["distill"] == 1.0
