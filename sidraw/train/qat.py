"""Quantisation-aware training (QAT) of the U-Net for onnxruntime's INT8 QDQ model.

:func:`sidraw.quantize.quantize_onnx` (onnxruntime ``quantize_static``, QDQ format) puts a
QuantizeLinear/DequantizeLinear pair on these tensors of the exported U-Net:

* the network input and the output of every Conv and ConvTranspose (the head's output too);
* the output of every LeakyRelu;
* the output of every Concat (a range of its own; the inputs keep theirs);
* MaxPool outputs share the scale of their input, so quantising them changes nothing.

Weights are int8, symmetric, per output channel (axis 0 for Conv, axis 1 for ConvTranspose,
whose weights are ``(in, out, kh, kw)``), ``scale = max|w| / 127`` over the channel, values
``-127..127``; biases are int32 with ``scale = input scale x weight scale``. Activations are uint8
per tensor, asymmetric: ``scale = (max(rmax, 0) - min(rmin, 0)) / 255``,
``zero_point = round(-min(rmin, 0) / scale)``; onnxruntime rounds half to even, as
:func:`torch.round` does.

:class:`QATUNet` runs a :class:`~sidraw.train.unet.UNet` with fake quantisation at exactly those
places (straight-through estimator for the rounding). Activation ranges are first observed
(min and max over ``observe_steps`` training batches; the input and output have the fixed ranges
-1..1 and 0..1 of the data), then either frozen or learned (``range_lr > 0``, relative to the
observed magnitude: the gradient reaches ``rmin``/``rmax`` through scale and zero point, as in
LSQ). A moving average of per-batch min/max (a common QAT observer) was tried first and clipped
too much: highlights are rare in 192x192 patches, and the in-training validation lost 2.4 dB.

:func:`export_qat` writes the fine-tuned float weights through the usual export
(:func:`sidraw.train.export.export_onnx`) and the INT8 model with the QAT scales and zero points
passed to ``quantize_static`` as ``TensorQuantOverrides``, so onnxruntime's INT8 model computes
what was trained (bit for bit on most tiles; a conv output within float rounding of a .5 step can
round the other way and the difference then spreads through later layers, which leaves the PSNR
unchanged).

Float layers (``float_first``, ``float_head``, ``float_tail``, ``float_level0``) are left out of
the INT8 model (``nodes_to_exclude``). Measured on the Bayer model (2026-11, 1 thread): the INT8
loss comes almost entirely from the full-resolution layers on smooth, high-PSNR images (an INT8
noise floor near 40 dB raw), and ``float_level0`` alone brings it within 0.1 dB raw of the float
model (``calibrate``, no training: -0.09 dB at x100). Fine-tuning with fake quantisation (L1 to
the clean patch, or distillation from the float model) moved the float weights down by 0.1-0.4 dB
and, in the 300-740 steps tried, gave an INT8 model no better in raw PSNR than the untrained
ranges (with only the first and last layers in float it gained 0.14 dB over its start but stayed
0.37 dB below the float model).

``--distill 1 --distill-loss relmse`` trains the quantised network towards the float teacher's
output with a per-patch relative error (see :meth:`QATTrainer.loss`).

Examples::

    python -m sidraw.train.qat train --init weights/sidraw-bayer.onnx --float-level0 \
        --distill 1 --distill-loss relmse --fp32 --patch 192 --batch 4 --lr 1e-5 --lr-min 1e-6 \
        --warmup 50 --minutes 22 --threads 1 --out runs/qat/bayer
    python -m sidraw.train.qat export --checkpoint runs/qat/bayer/checkpoint.pt \
        --name sidraw-bayer-qat --out runs/qat
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loop import TrainConfig, Trainer, load_checkpoint, parse_args
from .unet import UNet, UNetConfig

ACT_QMAX = 255  # uint8 activations
W_QMAX = 127  # symmetric int8 weights: -127..127


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def act_qparams(rmin: torch.Tensor, rmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) of a uint8 activation range as onnxruntime computes them.

    The range is widened to include 0; the zero point is rounded with a straight-through
    gradient, so both stay differentiable in ``rmin`` and ``rmax``.
    """
    lo = torch.clamp(rmin, max=0.0)
    hi = torch.clamp(rmax, min=0.0)
    scale = torch.clamp((hi - lo) / ACT_QMAX, min=1e-8)
    zp = torch.clamp(_round_ste(-lo / scale), 0, ACT_QMAX)
    return scale, zp


def fake_quant_act(x: torch.Tensor, rmin: torch.Tensor, rmax: torch.Tensor) -> torch.Tensor:
    """uint8 per-tensor quantise-dequantise: ``(clamp(round(x / s) + z, 0, 255) - z) * s``.

    Computed in float32 (also under bf16 autocast) so that it rounds as onnxruntime does.
    """
    scale, zp = act_qparams(rmin.float(), rmax.float())
    q = torch.clamp(_round_ste(x.float() / scale) + zp, 0, ACT_QMAX)
    return (q - zp) * scale


def weight_scale(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel symmetric int8 scale ``max|w| / 127`` along ``axis`` (float64 division cast to
    float32, as onnxruntime does), shaped to broadcast against ``w``; no gradient."""
    dims = [d for d in range(w.dim()) if d != axis]
    absmax = w.detach().abs().amax(dim=dims).double()
    scale = (2 * absmax / (2 * W_QMAX)).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shape = [1] * w.dim()
    shape[axis] = -1
    return scale.reshape(shape)


def fake_quant_weight(w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 quantise-dequantised weight, per-channel scale as a 1-D tensor)."""
    scale = weight_scale(w, axis)
    q = torch.clamp(_round_ste(w / scale), -W_QMAX, W_QMAX)
    return q * scale, scale.reshape(-1)


def fake_quant_bias(b: torch.Tensor, in_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """int32 bias with scale ``input scale x weight scale`` (zero point 0)."""
    scale = (in_scale.detach() * w_scale).float()
    return _round_ste(b / scale) * scale


class ActQuant(nn.Module):
    """Fake quantisation of one activation tensor (uint8, per tensor).

    ``mode`` is ``"observe"`` (pass through, widen the range to the batch's min and max, or a
    moving average of them with ``momentum``), ``"quant"`` or ``"off"`` (pass through: the float
    model). The range is stored relative to ``ref`` (the largest magnitude observed), so one
    learning rate suits ranges of any size; ``fixed`` ranges are neither observed nor learned.
    """

    def __init__(
        self, momentum: float | None = None, fixed: tuple[float, float] | None = None
    ) -> None:
        super().__init__()
        lo, hi = fixed if fixed else (-1.0, 1.0)
        self.lo = nn.Parameter(torch.tensor(float(lo)), requires_grad=fixed is None)
        self.hi = nn.Parameter(torch.tensor(float(hi)), requires_grad=fixed is None)
        self.register_buffer("ref", torch.tensor(1.0))
        self.register_buffer("observed", torch.tensor(0, dtype=torch.long))
        self.momentum = momentum
        self.fixed = fixed is not None
        self.mode = "quant"

    @property
    def rmin(self) -> torch.Tensor:
        return self.lo * self.ref

    @property
    def rmax(self) -> torch.Tensor:
        return self.hi * self.ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "off":
            return x
        if self.mode == "observe":
            if not self.fixed:
                self._observe(x)
            return x
        return fake_quant_act(x, self.rmin, self.rmax)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().float().aminmax()
        if int(self.observed) > 0:
            rmin, rmax = self.rmin.detach(), self.rmax.detach()
            if self.momentum is None:
                lo, hi = torch.minimum(rmin, lo), torch.maximum(rmax, hi)
            else:
                m = self.momentum
                lo, hi = (1 - m) * rmin + m * lo, (1 - m) * rmax + m * hi
        ref = torch.clamp(torch.maximum(lo.abs(), hi.abs()), min=1e-6)
        self.ref.copy_(ref)
        self.lo.copy_(lo / ref)
        self.hi.copy_(hi / ref)
        self.observed += 1

    def qparams(self) -> tuple[float, int]:
        """(scale, zero_point) as plain numbers, for the onnxruntime overrides."""
        with torch.no_grad():
            scale, zp = act_qparams(self.rmin.detach().float(), self.rmax.detach().float())
        return float(scale), int(zp)

    def scale(self) -> torch.Tensor:
        if self.mode != "quant":
            return torch.ones(())
        return act_qparams(self.rmin.float(), self.rmax.float())[0]


# Ranges known from the data: the input is clipped to -1..1 and the output to 0..1 at inference,
# so quantising to exactly these loses nothing a min/max over patches would not (and highlights,
# rare in patches, keep their range).
FIXED_RANGES = {"input": (-1.0, 1.0), "head": (0.0, 1.0)}


def act_points(config: UNetConfig) -> list[str]:
    """Names of the quantised activations, after the module that produces them (``enc.0.0``:
    output of that Conv, ``enc.0.1``: of the LeakyReLU after it, ``up.k``, ``cat.k``, ``head``)."""
    names = ["input"]
    levels = len(config.widths)
    blocks = [f"enc.{i}" for i in range(levels)] + [f"dec.{k}" for k in range(levels - 1)]
    for b in blocks:
        names += [f"{b}.{j}" for j in range(4)]
    names += [f"up.{k}" for k in range(levels - 1)] + [f"cat.{k}" for k in range(levels - 1)]
    return [*names, "head"]


def _key(name: str) -> str:
    return name.replace(".", "_")


class QATUNet(nn.Module):
    """A :class:`UNet` run with onnxruntime-style fake quantisation (see the module docstring).

    Args:
        net: the float network (its parameters are trained in place).
        observe_steps: training-mode forward passes that only observe activation ranges before
            quantisation starts (0: start quantised with the ranges already in ``acts``).
        fp32: run the forward in float32 even inside a bf16 autocast region (slower, exact).

        float_first: leave the first convolution in float (its input, the amplified raw, is not
            quantised; its output is), as :func:`quantize_qat` then does.
        float_head: leave the 1x1 output convolution (weights and output) in float.
        float_tail: also leave the last 3x3 convolution and its LeakyReLU in float (implies
            ``float_head``): the quantisation noise of the last full-resolution features reaches
            the output unfiltered and costs most of the INT8 loss.
        float_level0: leave every layer at full resolution in float (first double conv, last
            concat and double conv, head): INT8 only from the first max-pooling to the last
            transposed convolution. The pooled first-level features are then quantised with the
            range of ``enc.0.3`` (a max-pool keeps the maximum).

    A uint8 input or output has only 255 levels over the whole range, which the sRGB tone curve
    shows in the shadows; the two layers cost about 1 % of the network's operations.
    """

    def __init__(
        self,
        net: UNet,
        observe_steps: int = 50,
        fp32: bool = False,
        float_first: bool = False,
        float_head: bool = False,
        float_tail: bool = False,
        float_level0: bool = False,
    ) -> None:
        super().__init__()
        if net.config.residual:
            raise NotImplementedError("QAT covers the plain (non-residual) U-Net only")
        self.net = net
        self.acts = nn.ModuleDict(
            {_key(n): ActQuant(fixed=FIXED_RANGES.get(n)) for n in act_points(net.config)}
        )
        self.observe_steps = observe_steps
        self.fp32 = fp32
        self.weight_quant = True
        self.float_first = float_first
        self.float_head = float_head
        self.float_tail = float_tail
        self.float_level0 = float_level0
        self.register_buffer("train_calls", torch.tensor(0, dtype=torch.long))

    def act(self, name: str) -> ActQuant:
        return self.acts[_key(name)]  # type: ignore[return-value]

    def set_mode(self, mode: str) -> None:
        """``quant``, ``observe`` or ``off`` for every activation quantiser."""
        for q in self.acts.values():
            q.mode = mode  # type: ignore[assignment]

    def range_parameters(self) -> list[nn.Parameter]:
        """The learnable (relative) activation ranges."""
        return [p for n, p in self.named_parameters() if n.startswith("acts.") and p.requires_grad]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def _q(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.act(name)
        return q(x), q.scale()

    def _conv(
        self,
        conv: nn.Conv2d | nn.ConvTranspose2d,
        x: torch.Tensor,
        in_scale: torch.Tensor,
        quant: bool = True,
    ) -> torch.Tensor:
        transposed = isinstance(conv, nn.ConvTranspose2d)
        w, b = conv.weight, conv.bias
        assert b is not None
        if not quant:
            return F.conv2d(x.float(), w.float(), b.float(), padding=conv.padding)
        if self.weight_quant:
            w, ws = fake_quant_weight(w.float(), axis=1 if transposed else 0)
            if self.act("input").mode == "quant":
                b = fake_quant_bias(b.float(), in_scale, ws)
        if transposed:
            return F.conv_transpose2d(x, w, b, stride=conv.stride)
        return F.conv2d(x, w, b, padding=conv.padding)

    def _double(
        self, block: nn.Sequential, name: str, x: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.float_level0 and name in ("enc.0", self._last_block()):
            return block(x.float()), torch.ones(())
        for j in (0, 2):
            conv, act = block[j], block[j + 1]
            quant = not (self.float_first and name == "enc.0" and j == 0)
            if self.float_tail and j == 2 and name == self._last_block():
                return act(self._conv(conv, x, s, quant=False)), torch.ones(())
            x, s = self._q(f"{name}.{j}", self._conv(conv, x, s, quant))
            x, s = self._q(f"{name}.{j + 1}", act(x))
        return x, s

    def _last_block(self) -> str:
        return f"dec.{len(self.net.dec) - 1}"

    def float_points(self) -> set[str]:
        """Activation points left in float by ``float_first`` / ``float_head`` / ``float_tail``."""
        out = set()
        if self.float_first:
            out.add("input")
        if self.float_head or self.float_tail:
            out.add("head")
        if self.float_tail:
            out |= {f"{self._last_block()}.2", f"{self._last_block()}.3"}
        if self.float_level0:
            last = self._last_block()
            out |= {"input", "head", f"cat.{last.split('.')[1]}"}
            out |= {f"{b}.{j}" for b in ("enc.0", last) for j in range(4)}
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if int(self.train_calls) < self.observe_steps:
                self.set_mode("observe")
            elif self.act("input").mode == "observe":
                self.set_mode("quant")
            self.train_calls += 1
        autocast = not self.fp32 and torch.is_autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=autocast):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        levels = len(net.enc)
        if self.float_first or self.float_level0:
            s = torch.ones(())
        else:
            x, s = self._q("input", x)
        skips = []
        for i, block in enumerate(net.enc):
            x, s = self._double(block, f"enc.{i}", x, s)
            if i < levels - 1:
                skips.append((x, s))
                x = net.pool(x)  # same scale as its input in the QDQ model: exact as it is
                if i == 0 and self.float_level0:
                    x, s = self._q("enc.0.3", x)
        for k, (up, dec) in enumerate(zip(net.up, net.dec, strict=True)):
            x, s = self._q(f"up.{k}", self._conv(up, x, s))
            skip, _ = skips.pop()
            x = torch.cat([x.float(), skip.float()], dim=1)
            if not (self.float_level0 and k == levels - 2):
                x, s = self._q(f"cat.{k}", x)
            x, s = self._double(dec, f"dec.{k}", x, s)
        if self.float_head or self.float_tail or self.float_level0:
            return self._conv(net.head, x, s, quant=False)
        out, _ = self._q("head", self._conv(net.head, x, s))
        return out.float()

    def overrides(self, onnx_path: str | Path) -> dict[str, list[dict[str, object]]]:
        """onnxruntime ``TensorQuantOverrides`` (tensor name -> scale and zero point) of every
        quantised activation, the tensors found by their producers in the exported graph."""
        names = onnx_activation_names(onnx_path)
        out: dict[str, list[dict[str, object]]] = {}
        for point in act_points(self.net.config):
            tensor = names[point]
            if self.float_level0 and point == "enc.0.3":
                tensor = names["pool.0"]
            elif point in self.float_points():
                continue
            scale, zp = self.act(point).qparams()
            out[tensor] = [
                {"scale": np.array(scale, np.float32), "zero_point": np.array(zp, np.uint8)}
            ]
        return out


def onnx_activation_names(path: str | Path) -> dict[str, str]:
    """Map :func:`act_points` names to the tensor names of an exported U-Net graph.

    Conv/ConvTranspose outputs are found by their weight initializer (the export keeps the
    state_dict names, possibly with a ``__f32`` suffix), LeakyRelu outputs as the consumer of a
    Conv output, Concat outputs as the consumer of an ``up.k`` output.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def producer_module(node: onnx.NodeProto) -> str | None:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            return None
        w = node.input[1]
        # Follow a Cast (float16 initializers) back to the initializer name.
        for n in graph.node:
            if w in n.output and n.op_type == "Cast":
                w = n.input[0]
        w = w.removesuffix("__f32")
        return w.removesuffix(".weight") if w.endswith(".weight") else None

    names = {"input": graph.input[0].name}
    for node in graph.node:
        module = producer_module(node)
        if module is None:
            continue
        out = node.output[0]
        if module == "head":
            names["head"] = out
            continue
        names[module] = out
        for c in consumers.get(out, []):
            if c.op_type == "LeakyRelu":
                block, j = module.rsplit(".", 1)
                names[f"{block}.{int(j) + 1}"] = c.output[0]
            elif c.op_type == "Concat" and module.startswith("up."):
                names["cat." + module.split(".")[1]] = c.output[0]
    for c in consumers.get(names.get("enc.0.3", ""), []):
        if c.op_type == "MaxPool":
            names["pool.0"] = c.output[0]
    return names


def end_node_names(path: str | Path) -> tuple[str, str]:
    """Names of the first convolution's node (reads the graph input) and of the output
    convolution's node (writes the graph output) in an exported U-Net graph."""
    import onnx

    graph = onnx.load(str(path)).graph
    inp, out = graph.input[0].name, graph.output[0].name
    first = [n.name for n in graph.node if n.op_type == "Conv" and inp in n.input]
    head = [n.name for n in graph.node if n.op_type == "Conv" and out in n.output]
    if len(first) != 1 or len(head) != 1:
        raise ValueError(f"{path}: no single Conv reads the input / writes the output")
    return first[0], head[0]


def tail_node_names(path: str | Path, block: str) -> list[str]:
    """Names of the nodes of ``<block>.2`` (Conv) and of the LeakyRelu after it."""
    import onnx

    graph = onnx.load(str(path)).graph
    tensors = onnx_activation_names(path)
    conv_out, act_out = tensors[f"{block}.2"], tensors[f"{block}.3"]
    names = [n.name for n in graph.node if n.output and n.output[0] in (conv_out, act_out)]
    if len(names) != 2:
        raise ValueError(f"{path}: nodes of {block}.2 / {block}.3 not found")
    return names


def level0_node_names(path: str | Path, model: QATUNet) -> list[str]:
    """Names of the nodes at full resolution that ``float_level0`` leaves in float."""
    import onnx

    graph = onnx.load(str(path)).graph
    tensors = onnx_activation_names(path)
    wanted = {tensors[p] for p in model.float_points() if p != "input"}
    names = [n.name for n in graph.node if n.output and n.output[0] in wanted]
    if len(names) != len(wanted):
        raise ValueError(f"{path}: full-resolution nodes not all found")
    return names


# --- training ------------------------------------------------------------------------------------


class QATTrainer(Trainer):
    """:class:`~sidraw.train.loop.Trainer` with the model wrapped in :class:`QATUNet`.

    The checkpoint (``<out>/checkpoint.pt``) holds the QAT state dict (``net.*`` weights and
    ``acts.*`` ranges) and a ``qat`` entry with the QAT settings.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        resume: bool = False,
        observe_steps: int = 50,
        range_lr: float = 0.0,
        fp32: bool = False,
        float_first: bool = False,
        float_head: bool = False,
        distill: float = 0.0,
        float_tail: bool = False,
        distill_loss: str = "l1",
        float_level0: bool = False,
    ) -> None:
        ckpt_path = out / "checkpoint.pt"
        ckpt = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
        teacher = cfg.init  # the float model: warm start, and teacher when distilling
        if ckpt is not None:
            cfg.init = None  # the weights come from the checkpoint
        super().__init__(cfg, out, resume=False)
        self.qat = {
            "observe_steps": observe_steps,
            "range_lr": range_lr,
            "fp32": fp32,
            "float_first": float_first,
            "float_head": float_head,
            "float_tail": float_tail,
            "float_level0": float_level0,
            "distill": distill,
            "distill_loss": distill_loss,
            "teacher": teacher,
        }
        self.teacher: UNet | None = None
        if distill > 0:
            if not teacher:
                raise ValueError("--distill needs --init (the float teacher)")
            from .onnx_io import load_checkpoint_weights, load_onnx_weights

            self.teacher = UNet(cfg.unet()).eval()
            load = load_checkpoint_weights if teacher.endswith(".pt") else load_onnx_weights
            load(self.teacher, teacher)
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.model = QATUNet(
            self.model, observe_steps, fp32, float_first, float_head, float_tail, float_level0
        )
        groups = [{"params": self.model.weight_parameters(), "lr": cfg.lr}]
        if range_lr > 0:
            groups.append({"params": self.model.range_parameters(), "lr": range_lr, "fixed": True})
        self.opt = torch.optim.Adam(groups, lr=cfg.lr)
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])  # type: ignore[arg-type]
            self.opt.load_state_dict(ckpt["optimizer"])  # type: ignore[arg-type]
            self.step = int(ckpt["step"])  # type: ignore[arg-type]
            self.elapsed = float(ckpt["elapsed"])  # type: ignore[arg-type]
            self.cfg.patch_history = TrainConfig(**ckpt["config"]).patch_history  # type: ignore[arg-type]
            if int(self.model.train_calls) >= observe_steps:
                self.model.set_mode("quant")
        self._fix_range_lr()

    def _fix_range_lr(self) -> None:
        # Trainer.run sets every group's lr from the weight schedule; keep the ranges' own lr.
        opt = self.opt
        step = opt.step

        def stepper(*args: object, **kwargs: object) -> object:
            for g in opt.param_groups:
                if g.get("fixed"):
                    g["lr"] = self.qat["range_lr"]
            return step(*args, **kwargs)  # type: ignore[arg-type]

        opt.step = stepper  # type: ignore[method-assign]

    def loss(self, pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distillation from the float teacher (``--init``), when ``distill`` > 0.

        ``l1``: L1 to ``distill`` x teacher output + (1 - ``distill``) x clean patch.
        ``relmse``: per patch, MSE(student, teacher) / MSE(teacher, clean), both clipped to 0..1
        as at inference, averaged over the batch: to first order the drop of each patch's PSNR
        caused by quantisation. Plain L1 is dominated by bright, noisy patches, while a fixed
        quantisation step costs most PSNR in dark ones, which the evaluation averages per image.
        """
        if self.teacher is None:
            return super().loss(pred, x, y)
        with torch.no_grad():
            t = self.teacher(x).float()
        if self.qat["distill_loss"] == "relmse":
            t = t.clamp(0, 1)
            err = ((pred.clamp(0, 1) - t) ** 2).mean(dim=(1, 2, 3))
            ref = ((t - y) ** 2).mean(dim=(1, 2, 3))
            return torch.mean(err / (ref + 1e-6))
        a = float(self.qat["distill"])  # type: ignore[arg-type]
        return torch.mean(torch.abs(pred - (a * t + (1 - a) * y)))

    def payload(self) -> dict[str, object]:
        data = super().payload()
        data["qat"] = dict(self.qat)
        return data


def load_qat(path: str | Path) -> tuple[QATUNet, TrainConfig, dict[str, object]]:
    """(QAT model in eval mode, quantising; its training config; step and elapsed) of a QAT
    checkpoint."""
    ckpt = load_checkpoint(Path(path))
    cfg = TrainConfig(**ckpt["config"])  # type: ignore[arg-type]
    qat = dict(ckpt.get("qat", {}))  # type: ignore[call-overload]
    model = QATUNet(
        UNet(cfg.unet()),
        observe_steps=0,
        fp32=True,
        float_first=bool(qat.get("float_first", False)),
        float_head=bool(qat.get("float_head", False)),
        float_tail=bool(qat.get("float_tail", False)),
        float_level0=bool(qat.get("float_level0", False)),
    )
    model.load_state_dict(ckpt["model"])  # type: ignore[arg-type]
    model.set_mode("quant")
    model.eval()
    info = {"step": int(ckpt["step"]), "elapsed_s": float(ckpt["elapsed"]), **qat}  # type: ignore[arg-type]
    return model, cfg, info


# --- export --------------------------------------------------------------------------------------


def quantize_qat(
    model: QATUNet,
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration: list[np.ndarray] | None = None,
) -> dict[str, list[dict[str, object]]]:
    """Write the INT8 QDQ model of an exported QAT network with the trained activation ranges.

    Runs the same preparation and settings as :func:`sidraw.quantize.quantize`; every activation
    range is overridden, so ``calibration`` (default: one synthetic batch) does not change the
    result. With ``model.float_first`` / ``float_head`` the first / output convolution stays in
    float. Returns the overrides used.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..quantize import quantize_onnx

    int8_path = Path(int8_path)
    prepared = int8_path.with_suffix(".prep.onnx")
    c = model.net.config.channels
    if calibration is None:
        calibration = [np.random.default_rng(0).uniform(-1, 1, (1, c, 64, 64)).astype(np.float32)]
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        overrides = model.overrides(prepared)
        first, head = end_node_names(prepared)
        exclude = [first] * model.float_first + [head] * (model.float_head or model.float_tail)
        if model.float_tail:
            exclude += tail_node_names(prepared, model._last_block())
        if model.float_level0:
            exclude = level0_node_names(prepared, model)
        quantize_onnx(prepared, int8_path, [{"input": b} for b in calibration], overrides, exclude)
    finally:
        prepared.unlink(missing_ok=True)
    return overrides


def export_qat(
    model: QATUNet,
    out: str | Path,
    name: str,
    float16_weights: bool = True,
) -> tuple[Path, Path, dict[str, float]]:
    """Write ``<out>/<name>.onnx`` (float weights, the usual export) and ``<name>.int8.onnx``
    (QAT ranges; first / output convolution in float as ``model.float_first`` /
    ``model.float_head`` say), and check on a random tile that onnxruntime's INT8 output matches
    the PyTorch fake-quantised one.

    Returns:
        (fp32 path, int8 path, {"fp32_parity", "int8_vs_fakequant_max", "int8_vs_fakequant_mean"}).
    """
    import onnxruntime as ort

    from .export import export_onnx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = out / f"{name}.onnx", out / f"{name}.int8.onnx"
    model.eval()
    # export_onnx rounds the network's parameters to float16 in place, so the fake-quant model
    # below uses the very weights the INT8 file is built from.
    parity = export_onnx(model.net, fp32_path, float16_weights=float16_weights)
    quantize_qat(model, fp32_path, int8_path)
    x = np.random.default_rng(1).uniform(-0.05, 0.6, (1, model.net.config.channels, 128, 128))
    x = x.astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(["output"], {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    diff = np.abs(got - ref)
    return (
        fp32_path,
        int8_path,
        {
            "fp32_parity": parity,
            "int8_vs_fakequant_max": float(diff.max()),
            "int8_vs_fakequant_mean": float(diff.mean()),
        },
    )


def calibrate(
    model: QATUNet,
    batches: int = 40,
    patch: int = 192,
    batch: int = 4,
    data: str | None = None,
    cache: str | Path | None = None,
    seed: int = 5,
) -> None:
    """Observe the activation ranges of ``model`` (min and max) on training batches drawn as the
    training loop draws them, and switch it to quantising: the QAT ranges without fine-tuning."""
    from . import data as data_mod
    from .pairs import mosaic_size, training_pair

    root = data_mod.data_root(data)
    train_e, _ = data_mod.split(data_mod.manifest(root))
    photos = data_mod.load_photos(root, train_e, cache=Path(cache) if cache else None)
    sampler = data_mod.PatchSampler(photos, seed=seed)
    rng = np.random.default_rng(seed)
    cfa = "bayer" if model.net.config.channels == 4 else "xtrans"
    size = mosaic_size(patch, cfa)
    model.eval()
    model.set_mode("observe")
    with torch.no_grad():
        for _ in range(batches):
            xs = [training_pair(sampler.crop(size), cfa, patch, rng)[0] for _ in range(batch)]
            model(torch.from_numpy(np.stack(xs)))
    model.set_mode("quant")


# --- command line --------------------------------------------------------------------------------


#: Layers that may stay in float, as ``float_<flag>`` attributes of the model and CLI flags.
FLOAT_FLAGS = ("first", "head", "tail", "level0")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="QAT fine-tuning; other options as sidraw.train.loop")
    tr.add_argument(
        "--observe-steps",
        type=int,
        default=50,
        help="steps that only observe activation ranges before quantising",
    )
    tr.add_argument(
        "--range-lr",
        type=float,
        default=0.0,
        help="Adam lr of the activation ranges (0: frozen after observing)",
    )
    tr.add_argument("--fp32", action="store_true", help="no bf16 autocast (slower)")
    tr.add_argument("--warmup", type=int, default=None, help="lr warm-up steps")
    tr.add_argument("--float-first", action="store_true", help="first convolution in float")
    tr.add_argument("--float-head", action="store_true", help="output convolution in float")
    tr.add_argument(
        "--float-tail",
        action="store_true",
        help="last 3x3 convolution, its LeakyReLU and the head in float",
    )
    tr.add_argument(
        "--float-level0",
        action="store_true",
        help="every full-resolution layer in float (INT8 below the first pooling)",
    )
    tr.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="weight of the --init network's output in the target (0: clean only)",
    )
    tr.add_argument(
        "--distill-loss",
        choices=["l1", "relmse"],
        default="l1",
        help="distillation loss (see QATTrainer.loss)",
    )
    ca = sub.add_parser(
        "calibrate",
        help="QAT ranges on a float model, no fine-tuning: write "
        "<out>/<name>.onnx and <name>.int8.onnx",
    )
    ca.add_argument("--init", required=True, help="float model (ONNX or checkpoint.pt)")
    ca.add_argument("--cfa", choices=["bayer", "xtrans"], default="bayer")
    ca.add_argument("--width", type=int, default=24)
    ca.add_argument("--max-mult", type=int, default=8)
    ca.add_argument("--batches", type=int, default=40)
    ca.add_argument("--patch", type=int, default=192)
    ca.add_argument("--batch", type=int, default=4)
    ca.add_argument("--data", default=None)
    ca.add_argument("--cache", default=None, help="pickle of the decoded training photos")
    ca.add_argument("--threads", type=int, default=1)
    ca.add_argument("--name", default="sidraw-bayer-mixed")
    ca.add_argument("--out", default="runs/qat")
    for flag in FLOAT_FLAGS:
        ca.add_argument(f"--float-{flag}", action="store_true")
    ex = sub.add_parser("export", help="write <out>/<name>.onnx and <name>.int8.onnx")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--name", default="sidraw-bayer-qat")
    ex.add_argument("--out", default="runs/qat")
    for flag, what in (
        ("first", "first convolution"),
        ("head", "output convolution"),
        ("tail", "last 3x3 convolution, its LeakyReLU and the head"),
        ("level0", "every full-resolution layer"),
    ):
        ex.add_argument(
            f"--float-{flag}",
            type=int,
            choices=[0, 1],
            default=None,
            help=f"{what} in float (default: as trained)",
        )
    a, rest = ap.parse_known_args(argv)
    if a.cmd == "train":
        cfg, out, resume = parse_args(rest)
        if a.warmup is not None:
            cfg.warmup = a.warmup
        out.mkdir(parents=True, exist_ok=True)
        t = QATTrainer(
            cfg,
            out,
            resume,
            a.observe_steps,
            a.range_lr,
            a.fp32,
            a.float_first,
            a.float_head,
            a.distill,
            a.float_tail,
            a.distill_loss,
            a.float_level0,
        )
        t.log(f"QAT: {t.qat}")
        t.run()
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.cmd == "calibrate":
        from .onnx_io import load_checkpoint_weights, load_onnx_weights

        torch.set_num_threads(a.threads)
        cfg = TrainConfig(cfa=a.cfa, width=a.width, max_mult=a.max_mult)
        net = UNet(cfg.unet())
        (load_checkpoint_weights if a.init.endswith(".pt") else load_onnx_weights)(net, a.init)
        model = QATUNet(net, 0, True, a.float_first, a.float_head, a.float_tail, a.float_level0)
        t0 = time.perf_counter()
        calibrate(model, a.batches, a.patch, a.batch, a.data, a.cache)
        fp32_path, int8_path, check = export_qat(model, a.out, a.name)
        report = {
            "fp32_onnx": str(fp32_path),
            "int8_onnx": str(int8_path),
            **check,
            "init": a.init,
            "calibration_batches": a.batches,
            "patch": a.patch,
            "batch": a.batch,
            **{f"float_{f}": getattr(a, f"float_{f}") for f in FLOAT_FLAGS},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _write_report(Path(a.out) / f"{a.name}.export.json", report)
        return
    model, cfg, info = load_qat(a.checkpoint)
    for f in FLOAT_FLAGS:
        if getattr(a, f"float_{f}") is not None:
            setattr(model, f"float_{f}", bool(getattr(a, f"float_{f}")))
    t0 = time.perf_counter()
    fp32_path, int8_path, check = export_qat(model, a.out, a.name)
    report = {
        "fp32_onnx": str(fp32_path),
        "int8_onnx": str(int8_path),
        **check,
        "qat": info,
        **{f"exported_float_{f}": getattr(model, f"float_{f}") for f in FLOAT_FLAGS},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_report(Path(a.out) / f"{a.name}.export.json", report)


def _write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
