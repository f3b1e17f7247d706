"""Models: finding them through their model cards, checking them, running them with onnxruntime.

A model is an ONNX file plus a JSON model card beside it (``<name>.json``) that says which CFA it
is for, its channel order, its downsampling factor and the sha256 of the ONNX file, checked when
the model is loaded. The bundled models live in the package's ``weights/`` folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import ModelError
from .mosaic import BAYER_CHANNELS, XTRANS_CHANNELS, Layout
from .staged import Stages, deep_overlap_for
from .tiling import DEFAULT_TILE
from .unet_split import UNetStages

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "int8", "fp16"]

#: Largest validation PSNR loss (dB) at which ``auto`` precision uses a model's INT8 variant (on
#: CPUs) or float16 variant (on GPUs).
INT8_MAX_PSNR_DROP = 0.1

_EXPECTED_CHANNELS = {"bayer": list(BAYER_CHANNELS), "xtrans": list(XTRANS_CHANNELS)}


def bundled_weights_dir() -> Path:
    """The folder of bundled models: ``sidraw/weights`` in a wheel, ``weights/`` in a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "weights"
    if installed.is_dir():
        return installed
    return here.parent / "weights"


@dataclass(frozen=True)
class ModelCard:
    """The machine-readable model card.

    Attributes:
        name: model name (e.g. ``"sidraw-bayer"``).
        path: the ONNX file.
        sha256: expected hex digest of the ONNX file.
        cfa: ``"bayer"`` or ``"xtrans"``.
        channels: channel colours in packed order.
        downsample: tile sizes must be multiples of this.
        input_name, output_name: ONNX tensor names.
        overlap: default tile overlap in packed pixels, measured on the network at export time
            (:func:`sidraw.tiling.measure_overlap`).
        tile: default tile size in packed pixels (larger for a larger overlap, so that fewer
            pixels are computed twice).
        variants: other precisions of the same network, e.g. ``{"int8": {"file": ...,
            "sha256": ..., "psnr_drop_db": 0.03}}`` (:mod:`sidraw.quantize`).
        input_clip: (lo, hi) clip of the amplified input.
        noise_input: name of the second ONNX input, the (N, 2) noise vector ``[a, b]`` of
            :func:`sidraw.noise_estimate.noise_vector`, for noise-conditioned models; None for
            models that see the image alone.
        mean_block: block edge (packed pixels) of the low-frequency mean correction applied
            to the output (:mod:`sidraw.mean_correction`); 0 for none.
        guard: the mean correction's residual guard ``c`` (0: none): each block keeps at most
            ``c`` times the expected noise energy of the network's correction.
        staged_level: the level ``L`` at which staged inference cuts the network
            (:mod:`sidraw.staged`); 0: overlapping tiles only.
        staged_context: packed pixels that the full-resolution stages read around each tile,
            measured at export (:func:`sidraw.staged.measure_context`).
        staged_tile: default side of those tiles (0: ``tile``).
        raw: the whole card as loaded.
    """

    name: str
    path: Path
    sha256: str
    cfa: str
    channels: tuple[str, ...]
    downsample: int = 16
    input_name: str = "input"
    output_name: str = "output"
    input_clip: tuple[float, float] = (-1.0, 1.0)
    overlap: int = 64
    tile: int = DEFAULT_TILE
    noise_input: str | None = None
    mean_block: int = 0
    guard: float = 0.0
    staged_level: int = 0
    staged_context: int = 0
    staged_tile: int = 0
    variants: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def load_card(card_path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a JSON model card.

    Raises:
        ModelError: unreadable JSON, missing keys, or values that do not fit sidraw's packing.
    """
    path = Path(card_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError("model card not found", path) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable model card ({exc})", path) from None
    try:
        cfa = str(data["cfa"])
        channels = tuple(str(c) for c in data["channels"])
        onnx_file = path.parent / str(data["file"])
        sha = str(data["sha256"]).lower()
        norm = data.get("normalisation", {})
        clip = tuple(float(v) for v in norm.get("input_clip", (-1.0, 1.0)))
        card = ModelCard(
            name=str(data.get("name", path.stem)),
            path=onnx_file,
            sha256=sha,
            cfa=cfa,
            channels=channels,
            downsample=int(data.get("downsample", 16)),
            input_name=str(data.get("input_name", "input")),
            output_name=str(data.get("output_name", "output")),
            input_clip=(clip[0], clip[1]),
            overlap=int(data.get("overlap", 64)),
            tile=int(data.get("tile", DEFAULT_TILE)),
            noise_input=str(data["noise_input"]) if data.get("noise_input") else None,
            mean_block=int(data.get("mean_correction", {}).get("block", 0)),
            guard=float(data.get("mean_correction", {}).get("guard", 0.0)),
            staged_level=int(data.get("staged", {}).get("level", 0)),
            staged_context=int(data.get("staged", {}).get("context", 0)),
            staged_tile=int(data.get("staged", {}).get("tile", 0)),
            variants={str(k): dict(v) for k, v in data.get("variants", {}).items()},
            raw=data,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelError(f"model card lacks a valid {exc}", path) from None
    if cfa not in _EXPECTED_CHANNELS:
        raise ModelError(f"model card names an unknown CFA kind {cfa!r}", path)
    if list(channels) != _EXPECTED_CHANNELS[cfa]:
        raise ModelError(f"model card channel order {channels} is not sidraw's {cfa} order", path)
    if card.downsample < 1 or card.downsample & (card.downsample - 1):
        raise ModelError("model card downsample must be a power of two", path)
    if card.tile < 64 or card.tile % card.downsample or not 0 <= card.overlap < card.tile:
        raise ModelError("model card tile must be a multiple of downsample, above overlap", path)
    if card.mean_block < 0:
        raise ModelError("model card mean_correction block must be at least 0", path)
    if card.guard < 0 or (card.guard and not card.mean_block):
        raise ModelError("model card mean_correction guard must be at least 0, with a block", path)
    scale = 2**card.staged_level
    if card.staged_level and (
        scale >= card.downsample
        or card.staged_context < 0
        or card.staged_context % scale
        or card.staged_tile < 0
        or card.staged_tile % card.downsample
    ):
        raise ModelError(
            "model card staged level must be below log2(downsample), its context a multiple "
            "of 2**level and its tile of downsample",
            path,
        )
    return card


def find_cards(folder: str | os.PathLike[str] | None = None) -> list[ModelCard]:
    """All valid model cards in a folder (default: the bundled weights)."""
    root = Path(folder) if folder is not None else bundled_weights_dir()
    cards = []
    for p in sorted(root.glob("*.json")):
        try:
            cards.append(load_card(p))
        except ModelError:
            continue
    return cards


def card_for(cfa: str, model: str | os.PathLike[str] | None = None) -> ModelCard:
    """The model card to use for a CFA kind.

    Args:
        cfa: ``"bayer"`` or ``"xtrans"``.
        model: a model card (``.json``), an ONNX file with a card beside it, a folder of cards, or
            None for the bundled models.

    Raises:
        ModelError: no model for this CFA kind, or the given model is for another kind.
    """
    if model is not None:
        p = Path(model)
        if p.is_dir():
            cards = [c for c in find_cards(p) if c.cfa == cfa]
            if not cards:
                raise ModelError(f"no {cfa} model card in this folder", p)
            return cards[0]
        card_path = p if p.suffix.lower() == ".json" else p.with_suffix(".json")
        card = load_card(card_path)
        if card.cfa != cfa:
            raise ModelError(f"model is for {card.cfa} sensors, this file needs {cfa}", p)
        return card
    cards = [c for c in find_cards() if c.cfa == cfa]
    if not cards:
        raise ModelError(
            f"no bundled {cfa} model found in {bundled_weights_dir()}; "
            "pass --model PATH to a model card"
        )
    return cards[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def physical_cores() -> int:
    """Physical CPU cores available to this process (logical / 2 when SMT is likely)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:
        logical = os.cpu_count() or 1
    try:
        siblings: set[str] = set()
        for cpu in range(os.cpu_count() or 1):
            p = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            if p.exists():
                siblings.add(p.read_text().strip())
        if siblings:
            return max(1, min(logical, len(siblings)))
    except OSError:
        pass
    return max(1, logical)


def _providers(device: Device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                "--device cuda needs onnxruntime-gpu and a CUDA GPU (pip install sidraw[gpu])"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def choose_file(card: ModelCard, precision: Precision, device: str) -> tuple[Path, str, str]:
    """The ONNX file for a precision: (path, expected sha256, precision used).

    ``auto`` takes the INT8 variant on CPUs, and the float16 variant on GPUs, when its validation
    sRGB PSNR loss is at most :data:`INT8_MAX_PSNR_DROP`; fp32 otherwise. ``fp16`` is for GPUs
    only: CPUs run float16 graphs by casting them back to float32, slower than fp32 itself.

    Raises:
        ModelError: the card has no variant of that precision, or fp16 is asked for on a CPU.
    """
    if precision == "fp32":
        return card.path, card.sha256, "fp32"
    kind = "fp16" if device == "cuda" else "int8"  # the reduced precision this device runs
    if precision not in ("auto", kind):
        raise ModelError(_WRONG_DEVICE[precision], card.path)
    variant = card.variants.get(kind)
    if precision == "auto":
        drop = (variant or {}).get("psnr_drop_db")
        if not variant or drop is None or float(drop) > INT8_MAX_PSNR_DROP:
            return card.path, card.sha256, "fp32"
    elif not variant:
        raise ModelError(f"model {card.name} has no {precision} variant", card.path)
    assert variant is not None
    if kind == "fp16":  # made from the float32 file at load (sidraw.float16): nothing to ship
        return card.path, card.sha256, kind
    return card.path.parent / str(variant["file"]), str(variant.get("sha256", "")).lower(), kind


_WRONG_DEVICE = {
    "fp16": "--precision fp16 is for GPUs (--device cuda); CPUs use fp32 or int8",
    "int8": "INT8 variants are for CPUs; use --precision fp16 or fp32 on a GPU",
}


def _float16_model(path: Path) -> bytes:
    """The float16 variant of an ONNX file (:func:`sidraw.float16.to_float16`)."""
    try:
        from .float16 import to_float16

        return to_float16(path.read_bytes())
    except ImportError:
        message = "--precision fp16 needs the onnx package (pip install sidraw[gpu])"
        raise ModelError(message, path) from None
    except ValueError as exc:
        raise ModelError(f"no float16 variant: {exc}", path) from None


class Network:
    """An onnxruntime session for one model card.

    Args:
        card: the model card; its ONNX file's sha256 is checked here.
        device: ``"auto"`` (CUDA when onnxruntime-gpu sees a GPU, else CPU), ``"cpu"``, ``"cuda"``.
        threads: intra-op threads (default: physical cores).
        precision: ``"auto"``, ``"fp32"``, ``"int8"`` (CPUs) or ``"fp16"`` (GPUs); see
            :func:`choose_file`.

    Attributes:
        precision: the precision chosen (never ``"auto"``).
        path, sha256: the ONNX file that runs (a variant's for ``int8``) and its checked sha256.
    """

    def __init__(
        self,
        card: ModelCard,
        device: Device = "auto",
        threads: int | None = None,
        precision: Precision = "auto",
    ):
        import onnxruntime as ort

        providers = _providers(device)
        path, sha, self.precision = choose_file(
            card, precision, "cuda" if providers[0].startswith("CUDA") else "cpu"
        )
        if not path.is_file():
            raise ModelError("model file not found", path)
        actual = file_sha256(path)
        if sha and actual != sha:
            raise ModelError(
                f"sha256 mismatch: card says {sha[:16]}…, file is {actual[:16]}…", path
            )
        opts = session_options(threads or physical_cores())
        model: str | bytes = str(path)
        if self.precision == "fp16":
            model = _float16_model(path)
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, untyped, errors
            raise ModelError(f"onnxruntime cannot load it ({exc})", path) from None
        self.card = card
        self.path, self.sha256 = path, actual
        self.providers = tuple(self.session.get_providers())
        self.threads = opts.intra_op_num_threads
        self._options = opts
        self._stage_sessions: dict[bool, tuple[Any, Any, Any, UNetStages]] = {}

    @property
    def device(self) -> str:
        return "cuda" if self.providers and self.providers[0].startswith("CUDA") else "cpu"

    def check_layout(self, layout: Layout, path: str) -> None:
        if layout.kind != self.card.cfa:
            raise ModelError(
                f"model {self.card.name} is for {self.card.cfa} sensors, "
                f"this file is {layout.kind}",
                path,
            )

    def __call__(
        self,
        batch: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        release_memory: bool = False,
    ) -> np.ndarray:
        """Run the network on a (N, C, h, w) float32 batch; returns (N, C, h, w) float32.

        ``noise`` is the (1, 2) float32 noise vector of the frame (see
        :func:`sidraw.noise_estimate.noise_vector`), needed by noise-conditioned models and
        ignored by the others. ``release_memory`` hands onnxruntime's memory pool back after this
        run (for the last tile of an image, so rendering and writing do not stack on top of the
        network's memory).
        """
        (out,) = self.session.run(
            [self.card.output_name], self._feeds(batch, noise), self._run_options(release_memory)
        )
        return np.asarray(out, dtype=np.float32)

    def _feeds(self, batch: np.ndarray, noise: np.ndarray | None) -> dict[str, np.ndarray]:
        feeds = {self.card.input_name: batch.astype(np.float32, copy=False)}
        if self.card.noise_input is not None:
            if noise is None:
                raise ModelError("this model needs the frame's noise estimate", self.card.path)
            vec = np.asarray(noise, dtype=np.float32).reshape(1, 2)
            feeds[self.card.noise_input] = np.repeat(vec, batch.shape[0], axis=0)
        return feeds

    def _run_options(self, release_memory: bool) -> Any:
        if not release_memory:
            return None
        import onnxruntime as ort

        options = ort.RunOptions()
        device = "gpu:0" if self.device == "cuda" else "cpu:0"
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", device)
        return options

    def stages(self, noise: np.ndarray | None = None, half_skips: bool = True) -> Stages | None:
        """The network cut for staged inference (:mod:`sidraw.staged`), for a frame of this
        ``noise``, its skip connections held as float16 with ``half_skips`` (as convert does),
        else as float32 (exactly the network's values); None where the card names no split
        level, for float16 variants and INT8 ones with quantised full-resolution layers (only
        float32 graphs, and INT8 ones of the ``deep`` kind, :data:`sidraw.quantize.Int8Layers`,
        are cut), or without the ``onnx`` package.

        Raises:
            ModelError: the graph cannot be cut where its card says.
        """
        card = self.card
        # Float32 graphs are cut, and INT8 ones whose staged levels stayed float.
        deep_int8 = card.variants.get("int8", {}).get("int8_layers") == "deep"
        if not card.staged_level or not (
            self.precision == "fp32" or (self.precision == "int8" and deep_int8)
        ):
            return None
        if half_skips not in self._stage_sessions:
            try:
                self._stage_sessions[half_skips] = self._load_stages(half_skips)
            except ImportError:
                return None
        encode, deep, decode, cut = self._stage_sessions[half_skips]
        # On CPUs the stages share one memory arena: the deep stage reuses what the encoder
        # freed and the decoder what the deep stage freed, so it is handed back only at the end.
        shared = self.device == "cpu"

        def run(session: Any, names: list[str], feeds: dict[str, np.ndarray], last: bool) -> list:
            return list(session.run(names, feeds, self._run_options(last)))

        def enc(x: np.ndarray, *, last: bool = False) -> list[np.ndarray]:
            feeds = self._feeds(x, noise)
            return run(encode, [cut.features, *cut.skips], feeds, last and not shared)

        def mid(f: np.ndarray, *, last: bool = False) -> np.ndarray:
            return run(deep, [cut.answer], {cut.features: f}, last and not shared)[0]

        def dec(x: np.ndarray, a: np.ndarray, *skips: np.ndarray, last: bool = False) -> np.ndarray:
            feeds = {card.input_name: x, cut.answer: a, **dict(zip(cut.skips, skips, strict=True))}
            return run(decode, [card.output_name], feeds, last)[0]

        scale = 2**card.staged_level
        # Features and answer float32 at 1/scale, skip k in its own type at 1/2**k.
        held = 4.0 * (_channels(encode, 0) + _channels(deep, 0)) / scale**2
        for k in range(card.staged_level):
            skip = encode.get_outputs()[1 + k]
            size = 2 if "float16" in skip.type else 4
            held += size * _channels(encode, 1 + k) / 4**k
        return Stages(
            encode=enc,
            deep=mid,
            decode=dec,
            scale=scale,
            context=card.staged_context,
            deep_overlap=deep_overlap_for(card.overlap, scale, card.downsample),
            answer_channels=_channels(deep, 0),
            held_bytes=held,
        )

    def _load_stages(self, half_skips: bool) -> tuple[Any, Any, Any, UNetStages]:
        import onnxruntime as ort

        from .stage_cache import cached_split

        card = self.card

        def model() -> bytes:
            # The file that runs, whose sha256 was checked at load.
            data = self.path.read_bytes()
            if hashlib.sha256(data).hexdigest() != self.sha256:
                raise ModelError("model file changed after it was loaded", self.path)
            return data

        inputs = [card.input_name, *([card.noise_input] if card.noise_input else [])]
        try:
            cut = cached_split(
                model, self.sha256, card.staged_level, inputs, card.output_name, half_skips
            )
            options = self._options
            if self.device == "cpu":
                options = session_options(self.threads, staged=True)
            sessions = [
                ort.InferenceSession(part, sess_options=options, providers=list(self.providers))
                for part in (cut.encode, cut.deep, cut.decode)
            ]
        except (ValueError, KeyError) as exc:
            message = f"cannot cut the network for staged inference ({exc})"
            raise ModelError(message, self.path) from None
        except ImportError:
            raise
        except Exception as exc:  # onnxruntime raises its own, untyped, errors
            raise ModelError(f"onnxruntime cannot load a stage ({exc})", self.path) from None
        return sessions[0], sessions[1], sessions[2], cut

    def release_after(self, batch: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """:meth:`__call__` with ``release_memory=True``."""
        return self(batch, noise=noise, release_memory=True)


def session_options(threads: int, staged: bool = False) -> Any:
    """sidraw's onnxruntime session settings (also what the benchmark's own sessions use).

    With ``staged`` (the stage sessions of staged inference on CPUs), the session allocates
    from the CPU memory arena that :func:`_register_shared_arena` puts in onnxruntime's
    environment (one per process, for all such sessions), and its idle threads sleep."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if staged:
        _register_shared_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
        # Staged inference alternates runs with sidraw's own numpy work (on two threads): idle
        # pool threads that sleep instead of spinning leave it the cores (12 MP Bayer, 2 cores:
        # 7 % less CPU time, 2 % less wall time; overlapping tiles, with less work between
        # runs, lose 5 % of wall time without the spinning, so they keep it).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


@functools.cache
def _register_shared_arena() -> None:
    """Register one CPU arena in onnxruntime's (process-wide) environment, once: sessions that
    ask for it reuse each other's freed memory instead of each touching fresh pages (on the 2-core
    benchmark machine, a 12 MP Bayer frame run staged takes 110,000 fewer page faults)."""
    import onnxruntime as ort

    arena, default = ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, ort.OrtMemType.DEFAULT
    info = ort.OrtMemoryInfo("Cpu", arena, 0, default)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))


def _channels(session: Any, output: int) -> int:
    """Channels (dimension 1) of an onnxruntime session's output."""
    return int(session.get_outputs()[output].shape[1])


class ModelCache:
    """Loads one :class:`Network` per CFA kind on first use and keeps it for a batch.

    Args:
        model: as for :func:`card_for` (None: bundled models).
        device, threads, precision: as for :class:`Network`.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: Device = "auto",
        threads: int | None = None,
        precision: Precision = "auto",
    ) -> None:
        self.model = model
        self.device: Device = device
        self.threads = threads
        self.precision: Precision = precision
        self._networks: dict[str, Network] = {}

    def get(self, cfa: str) -> Network:
        if cfa not in self._networks:
            card = card_for(cfa, self.model)
            self._networks[cfa] = Network(card, self.device, self.threads, self.precision)
        return self._networks[cfa]
