"""Tensors wherever a value goes (issue #20 items 1 and 2): ``log``, ``summary``, ``config`` and the media
constructors take PyTorch tensors (with or without grad, any dtype), numpy arrays and scalars, and JAX /
TensorFlow arrays (duck-typed here: those frameworks are not dependencies); images as W&B takes them.

The first test of each group is one of the issue's failures: it raised before the change (``RuntimeError: Can't
call numpy() on Tensor that requires grad`` out of ``log()``; ``SchemaError: image arrays must be HxW, HxWx3 or
HxWx4`` for a CHW tensor).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from support.sdk_frames import events, log_calls

from ingest.run import Run
from ingest.settings import ClientSettings
from schemas import Config, Histogram, Image, Media, SchemaError, Summary, capture, values_equal

if os.environ.get("CI") == "true":
    import torch
else:
    torch = pytest.importorskip("torch")


def make_run(tmp_path: Path, **kw: Any) -> Run:
    return Run(settings=ClientSettings(data_dir=tmp_path), project="proj", run_id="run1", **kw)


def png(media: Media) -> Any:
    from PIL import Image as PILImage

    (raw,) = media.blobs.values()
    im = PILImage.open(io.BytesIO(raw))
    im.load()
    return im


# -- item 1: tensors as values -----------------------------------------------------------------------------------


def test_a_zero_d_loss_that_requires_grad_logs_its_value(tmp_path: Path) -> None:
    """The issue's first failure: the 0-d tensor ``cross_entropy`` returns, with grad, logged as a number."""
    logits = torch.tensor([[2.0, 0.5, -1.0]], requires_grad=True)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    assert loss.requires_grad and loss.ndim == 0
    run = make_run(tmp_path)
    run.log({"train/loss": loss})
    run.log({"train/loss": loss * 2})
    (c1, c2) = log_calls(events(run))
    assert c1.data == {"train/loss": loss.item()} and type(c1.data["train/loss"]) is float
    assert c2.data == {"train/loss": (loss * 2).item()}


@pytest.mark.parametrize(
    ("dtype", "kind"),
    [
        ("float32", float),
        ("float64", float),
        ("float16", float),
        ("bfloat16", float),
        ("int64", int),
        ("int32", int),
        ("uint8", int),
        ("bool", bool),
    ],
)
def test_zero_d_tensors_of_every_dtype_are_their_python_scalar(dtype: str, kind: type) -> None:
    t = torch.tensor(1, dtype=getattr(torch, dtype))
    out = capture(t, "k")
    assert type(out) is kind and out == t.item()


def test_zero_d_numpy_arrays_are_scalars_too() -> None:
    assert capture(np.array(2.5), "k") == 2.5 and type(capture(np.array(2.5), "k")) is float
    assert capture(np.array(7, dtype=np.int16), "k") == 7
    assert capture(np.array(True), "k") is True
    assert type(capture(np.float32(0.5), "k")) is float


def test_small_tensors_are_arrays_and_large_ones_histograms_as_for_numpy() -> None:
    small = torch.arange(5, dtype=torch.float32, requires_grad=True)
    out = capture(small, "k")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.tolist() == [0, 1, 2, 3, 4]
    big = torch.linspace(0, 1, 100).to(torch.bfloat16)
    h = capture(big, "k")
    assert isinstance(h, Media) and h.kind == "histogram"
    assert h == capture(big.float().numpy(), "k")  # same as the float32 array: 32 bins, W&B's rule
    assert len(h.payload["values"]) == 32 and sum(h.payload["values"]) == 100


def test_a_captured_tensor_is_a_copy() -> None:
    t = torch.zeros(3)
    out = capture(t, "k")
    t += 1
    assert out.tolist() == [0, 0, 0]


def test_tensors_inside_lists_dicts_summary_and_config(tmp_path: Path) -> None:
    run = make_run(tmp_path, config={"lr": torch.tensor(0.001), "sizes": torch.tensor([2, 3])})
    run.config.update({"wd": torch.tensor(0.1, dtype=torch.float64)})
    run.summary["best"] = torch.tensor(0.25, requires_grad=True)
    run.log({"pair": [torch.tensor(1.0), torch.tensor(2)], "nested": {"a": torch.tensor(3.0)}})
    evs = events(run)
    start = evs[0]
    assert start.config["lr"] == pytest.approx(0.001) and type(start.config["lr"]) is float
    assert start.config["sizes"].tolist() == [2, 3]
    assert next(e for e in evs if isinstance(e, Config)).data == {"wd": 0.1}
    assert next(e for e in evs if isinstance(e, Summary)).data == {"best": 0.25}
    (call,) = log_calls(evs)
    assert call.data == {"pair": [1.0, 2], "nested.a": 3.0}


def test_non_cpu_and_odd_layouts_and_refusals() -> None:
    assert capture(torch.tensor([1.0, 0.0, 2.0]).to_sparse(), "k").tolist() == [1.0, 0.0, 2.0]
    assert capture(torch.nn.Parameter(torch.ones(2)), "k").tolist() == [1.0, 1.0]
    with pytest.raises(SchemaError) as e:
        capture(torch.empty(3, device="meta"), "w")
    assert e.value.key == "w" and "meta" in str(e.value)
    with pytest.raises(SchemaError, match="complex"):
        capture(torch.tensor(1 + 2j), "c")


def test_media_constructors_take_tensors() -> None:
    t = torch.randn(1000, requires_grad=True)
    assert Histogram(t).to_media() == Histogram(t.detach().numpy()).to_media()
    counts, edges = torch.histogram(t.detach(), bins=4)
    assert Histogram(np_histogram=(counts, edges)).counts == counts.tolist()


class FakeJaxArray:
    """Stands in for ``jax.Array`` (JAX is not a dependency): what capture looks at is the class's module and
    ``__array__``. ``ml_dtypes``' bfloat16 is a numpy void-kind dtype; here a float16 array plays the device copy."""

    __module__ = "jaxlib.xla_extension"

    def __init__(self, a: Any) -> None:
        self.a = np.asarray(a)
        self.copies = 0

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        self.copies += 1
        return self.a


class FakeEagerTensor:
    __module__ = "tensorflow.python.framework.ops"

    def __init__(self, a: Any) -> None:
        self.a = np.asarray(a)

    def numpy(self) -> Any:
        return self.a

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise AssertionError("TensorFlow tensors are read through .numpy()")


def test_jax_and_tensorflow_arrays_by_duck_typing() -> None:
    j = FakeJaxArray(np.float32(1.5))
    assert capture(j, "k") == 1.5 and j.copies == 1
    assert capture(FakeJaxArray([1, 2, 3]), "k").tolist() == [1, 2, 3]
    assert capture(FakeEagerTensor(np.array(4, dtype=np.int32)), "k") == 4
    h = capture(FakeEagerTensor(np.arange(50, dtype=np.float16)), "k")
    assert isinstance(h, Media) and h.kind == "histogram"


def test_logging_floats_never_imports_a_framework(tmp_path: Path) -> None:
    """Frameworks are recognised by their classes' modules: a script that logs floats and numpy never loads torch."""
    code = (
        "import sys, numpy as np\n"
        "from ingest.run import Run\n"
        "from ingest.settings import ClientSettings\n"
        f"r = Run(settings=ClientSettings(data_dir={str(tmp_path)!r}), project='p', run_id='r')\n"
        "r.log({'a': 1.0, 'b': np.float32(2), 'c': np.arange(40.0), 'd': [1, 2]})\n"
        "r.summary['s'] = np.array(3.0)\n"
        "bad = [m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- item 2: images as W&B takes them ---------------------------------------------------------------------------


def wandb_torch_pixels(t: Any) -> np.ndarray[Any, Any]:
    """W&B <= 0.19's ``Image(tensor)`` values, written with torch as W&B and torchvision do it:
    ``t.to(float)`` for uint8, ``make_grid(t, normalize=True)`` (``norm_range``: clamp to the tensor's own min and
    max, ``sub_(low).div_(max(high - low, 1e-5))``), then ``.mul(255).clamp(0, 255).byte()``; as HWC (or HW)."""
    if str(t.dtype) == "torch.uint8":
        t = t.to(float)
    t = t.detach().clone()
    low, high = float(t.min()), float(t.max())
    t.clamp_(min=low, max=high)
    t.sub_(low).div_(max(high - low, 1e-5))
    out = t.mul(255).clamp(0, 255).byte()
    hwc: np.ndarray[Any, Any] = (out.permute(1, 2, 0) if out.dim() == 3 else out).numpy()
    return hwc[:, :, 0] if hwc.ndim == 3 and hwc.shape[2] == 1 else hwc


def wandb_to_uint8(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """W&B <= 0.19's ``Image.to_uint8`` for arrays, as written in wandb/sdk/data_types/image.py (quoted in
    wandb/wandb#9982). NaN (a constant negative array's 0 / 0) is cast as 0 here: numpy leaves that cast undefined."""
    with np.errstate(all="ignore"):
        dmin = np.min(data)
        if dmin < 0:
            data = (data - np.min(data)) / np.ptp(data)
        if np.max(data) <= 1.0:
            data = (data * 255).astype(np.int32)
        out: np.ndarray[Any, Any] = np.nan_to_num(data.clip(0, 255), nan=0.0).astype(np.uint8)
    return out


def test_an_image_from_a_chw_float_tensor() -> None:
    """The issue's third failure: ``wandb.Image(torch.rand(3, 16, 16))`` (what torchvision gives)."""
    t = torch.rand(3, 16, 20)
    m = Image(t).to_media()
    im = png(m)
    assert (m.payload["width"], m.payload["height"], im.mode) == (20, 16, "RGB")
    assert np.array_equal(np.asarray(im), wandb_torch_pixels(t))


@pytest.mark.parametrize(
    ("make", "size", "mode"),
    [
        (lambda: torch.rand(3, 8, 8, requires_grad=True), (8, 8), "RGB"),
        (lambda: torch.rand(4, 8, 6), (6, 8), "RGBA"),
        (lambda: torch.rand(1, 8, 6), (6, 8), "L"),
        (lambda: torch.rand(8, 6, 1), (6, 8), "L"),
        (lambda: torch.rand(8, 6), (6, 8), "L"),
        (lambda: torch.rand(8, 6, 3, dtype=torch.float64), (6, 8), "RGB"),
        (lambda: torch.rand(3, 8, 8).to(torch.bfloat16), (8, 8), "RGB"),
        (lambda: np.random.default_rng(0).random((3, 5, 7)), (7, 5), "RGB"),
        (lambda: np.random.default_rng(0).random((5, 7, 3)), (7, 5), "RGB"),
        (lambda: np.zeros((3, 5, 3), dtype=np.uint8), (5, 3), "RGB"),  # last dim 3 wins: HWC, as W&B
        (lambda: np.ones((4, 4), dtype=bool), (4, 4), "L"),
    ],
)
def test_image_shapes_and_dtypes(make: Any, size: tuple[int, int], mode: str) -> None:
    m = Image(make(), caption="c").to_media()
    im = png(m)
    assert im.size == size and im.mode == mode
    assert (m.payload["width"], m.payload["height"]) == size and m.payload["caption"] == "c"


def pixels(data: Any, **kw: Any) -> list[Any]:
    out: list[Any] = np.asarray(png(Image(data, **kw).to_media())).tolist()
    return out


def test_array_values_follow_wandbs_to_uint8() -> None:
    """Each rule of W&B's ``to_uint8`` (numpy, JAX, TensorFlow arrays)."""
    assert pixels(np.array([[0.0, 0.5, 1.0]])) == [[0, 127, 255]]  # max <= 1: * 255, truncated
    assert pixels(np.array([[-1.0, 0.0, 1.0]])) == [[0, 127, 255]]  # a negative: min-max stretched first
    assert pixels(np.array([[-2, 0, 2]], dtype=np.int8)) == [[0, 127, 255]]  # integers too
    assert pixels(np.array([[3.0, 300.0]])) == [[3, 255]]  # past 1: taken as 0..255, clipped
    assert pixels(np.array([[1, 200]], dtype=np.uint8)) == [[1, 200]]
    assert pixels(np.array([[0, 1]], dtype=np.uint8)) == [[0, 255]]  # a uint8 0/1 mask: max <= 1, so * 255
    assert pixels(np.array([[0.5, 0.5]])) == [[127, 127]]  # constant: nothing to stretch
    assert pixels(np.array([[0.5, np.nan]])) == [[0, 0]]  # a NaN: min and max are NaN, nothing scaled; NaN as 0
    assert pixels(np.array([[-3.0, -3.0]])) == [[0, 0]]  # constant negative: W&B's 0 / 0 is NaN, cast as 0
    for a in (np.array([[0.0, 0.5, 1.0]]), np.array([[-1.0, 0.25, 1.0]]), np.array([[0, 1]], dtype=np.uint8),
              np.array([[3.0, 300.0]], dtype=np.float32)):
        assert pixels(a) == wandb_to_uint8(a).tolist()


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements={"allow_nan": False, "allow_infinity": False, "min_value": -300, "max_value": 300},
    ),
    st.sampled_from([np.float32, np.float64, np.uint8, np.int16]),
    st.sampled_from([1.0, 1 / 255, 1e-3, 1.0 / 300]),
)
def test_array_pixels_equal_wandbs_to_uint8(base: np.ndarray[Any, Any], dtype: Any, scale: float) -> None:
    """Any finite array (scaled into [0, 1] ranges too): the same pixels as W&B's own ``to_uint8``."""
    if np.dtype(dtype).kind == "f":
        arr = (base * scale).astype(dtype)
    else:
        arr = base.clip(0 if dtype == np.uint8 else -300, 255).astype(dtype)
    assert pixels(arr) == wandb_to_uint8(arr).tolist()


def test_tensor_values_follow_wandbs_make_grid_normalize() -> None:
    """Each rule of W&B's tensor path (``make_grid(normalize=True)``, then ``mul(255).clamp(0, 255).byte()``)."""
    t = torch.tensor([[[0.25, 0.5, 0.75, 0.5, 0.25]]])  # 1 x 1 x 5: stretched to its own min and max
    assert pixels(t) == [[0, 127, 255, 127, 0]] == wandb_torch_pixels(t).tolist()
    t = torch.tensor([[[10, 20, 30, 20, 10]]], dtype=torch.uint8)  # uint8 is stretched too (W&B: .to(float) first)
    assert pixels(t) == [[0, 127, 255, 127, 0]] == wandb_torch_pixels(t).tolist()
    t = torch.full((3, 2, 2), 0.7)  # constant: (x - lo) / 1e-5 = 0, black
    assert pixels(t) == [[[0, 0, 0]] * 2] * 2 == wandb_torch_pixels(t).tolist()
    t = torch.tensor([[[-5.0, 5.0]]])
    assert pixels(t) == [[0, 255]] == wandb_torch_pixels(t).tolist()
    assert pixels(torch.tensor([[[0.5, float("nan")]]])) == [[0, 0]]  # a NaN: min/max NaN, every pixel 0
    # The same values as a numpy array follow to_uint8 instead (W&B's two paths differ).
    assert pixels(np.array([[0.25, 0.5, 0.75, 0.5, 0.25]])) == [[63, 127, 191, 127, 63]]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([1, 3, 4]),
    st.integers(1, 8),
    st.integers(5, 9),
    st.sampled_from([torch.float32, torch.float64, torch.uint8]),
    st.sampled_from([1.0, 1e-3, 255.0, 1e4]),
    st.floats(-2, 2),
    st.integers(0, 2**31),
)
def test_tensor_pixels_equal_wandbs_make_grid(c: int, h: int, w: int, dtype: Any, scale: float, shift: float,
                                              seed: int) -> None:
    """Any CHW tensor: the same pixels as W&B's tensor path written with torch itself."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand((c, h, w), generator=g, dtype=torch.float64) * scale + shift
    t = (t.clamp(0, 255) if dtype == torch.uint8 else t).to(dtype)
    want = wandb_torch_pixels(t)
    assert np.array_equal(np.asarray(png(Image(t).to_media())), want)


def wandb_torch_grid(t: Any) -> np.ndarray[Any, Any]:
    """W&B <= 0.19's ``Image(batch)``: torchvision's ``make_grid(t, normalize=True)`` with its defaults (nrow=8,
    padding=2, pad_value=0), written with torch as torchvision does it, then ``mul(255).clamp(0, 255).byte()``."""
    t = t.detach().clone()
    if t.size(1) == 1:
        t = torch.cat((t, t, t), 1)
    low, high = float(t.min()), float(t.max())
    t.clamp_(min=low, max=high)
    t.sub_(low).div_(max(high - low, 1e-5))
    if t.size(0) == 1:
        grid = t.squeeze(0)
    else:
        nmaps, padding = t.size(0), 2
        xmaps = min(8, nmaps)
        ymaps = int(np.ceil(nmaps / xmaps))
        height, width = t.size(2) + padding, t.size(3) + padding
        grid = t.new_full((t.size(1), height * ymaps + padding, width * xmaps + padding), 0.0)
        k = 0
        for y in range(ymaps):
            for x in range(xmaps):
                if k >= nmaps:
                    break
                grid.narrow(1, y * height + padding, height - padding).narrow(
                    2, x * width + padding, width - padding).copy_(t[k])
                k += 1
    out: np.ndarray[Any, Any] = grid.mul(255).clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 19), st.sampled_from([1, 3, 4]), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31))
def test_a_tensor_batch_is_tiled_as_wandbs_make_grid(n: int, c: int, h: int, w: int, seed: int) -> None:
    """A B x C x H x W tensor: one image, the pixels of W&B's ``make_grid`` (a grayscale batch as one channel)."""
    t = torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed)) * 4 - 1
    got = np.asarray(png(Image(t).to_media()))
    want = wandb_torch_grid(t)
    assert np.array_equal(got, want[:, :, 0] if c == 1 else want)


def test_normalize_false_clips_and_casts() -> None:
    """W&B 0.20's ``normalize=False``: nothing stretched or multiplied, values clipped to [0, 255]."""
    assert pixels(np.array([[0.5, 1.0, 300.0, -4.0]]), normalize=False) == [[0, 1, 255, 0]]
    assert pixels(torch.tensor([[[0.5, 200.0]]]), normalize=False) == [[0, 200]]


def test_image_from_pil_matplotlib_and_another_image() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image as PILImage

    assert png(Image(PILImage.new("RGB", (4, 3))).to_media()).size == (4, 3)
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([0, 1], [1, 0])
    assert png(Image(fig).to_media()).size == (100, 50)
    assert png(Image(ax).to_media()).size == (100, 50)
    assert png(Image(plt).to_media()).size == (100, 50)  # wandb.Image(plt): the current figure
    plt.close(fig)
    first = Image(np.zeros((2, 2)), caption="a")
    again = Image(first)
    assert again.sha256 == first.sha256 and again.caption == "a"


def test_image_refusals_name_the_problem() -> None:
    with pytest.raises(SchemaError, match="masks"):
        Image(np.zeros((2, 2)), masks={"m": {}})
    with pytest.raises(SchemaError, match="boxes"):
        Image(np.zeros((2, 2)), boxes={"b": {}})
    with pytest.raises(SchemaError, match="list of images"):
        Image(np.random.default_rng(0).random((2, 3, 4, 4)))  # a numpy batch: W&B fails on it too
    with pytest.raises(SchemaError, match="B x C x H x W"):
        Image(torch.rand(2, 5, 4, 4))
    with pytest.raises(SchemaError, match="file_type"):
        Image(np.zeros((2, 2)), file_type="tiff")
    assert Image(np.zeros((2, 2)), file_type="jpg").format == "jpeg"


def test_a_list_of_images_under_one_key(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    imgs = [Image(torch.rand(3, 4, 4), caption=f"i{i}") for i in range(3)]
    run.log({"examples": imgs})
    (call,) = log_calls(events(run))
    value = call.data["examples"]
    assert [m.kind for m in value] == ["image"] * 3
    assert [m.payload["caption"] for m in value] == ["i0", "i1", "i2"]
    assert value == [i.to_media() for i in imgs]


# -- properties ---------------------------------------------------------------------------------------------------

FLOAT_DTYPES = st.sampled_from([np.float16, np.float32, np.float64])


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        FLOAT_DTYPES,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=50),
        elements={"allow_nan": True, "allow_infinity": True},
    )
)
def test_a_tensor_captures_as_its_numpy_array(arr: np.ndarray[Any, Any]) -> None:
    """Whatever the shape and values: a tensor, with grad or not, is captured exactly as the same numpy array."""
    t = torch.from_numpy(arr.copy())
    want = capture(arr, "k")
    assert values_equal(capture(t, "k"), want)
    assert values_equal(capture(t.clone().requires_grad_(True), "k"), want)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 3, 4]), st.integers(2, 12), st.integers(5, 12), FLOAT_DTYPES, st.booleans())
def test_chw_and_hwc_make_the_same_image(c: int, h: int, w: int, dtype: Any, unit: bool) -> None:
    """W&B's CHW rule: a C x H x W array (C in 1, 3, 4; W not) is the image of its H x W x C transpose."""
    rng = np.random.default_rng(h * 100 + w)
    hwc = (rng.random((h, w, c)) * (1 if unit else 255)).astype(dtype)
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    assert Image(chw).sha256 == Image(hwc).sha256
    assert Image(torch.from_numpy(chw)).sha256 == Image(torch.from_numpy(hwc)).sha256
