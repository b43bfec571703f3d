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


def test_an_image_from_a_chw_float_tensor() -> None:
    """The issue's third failure: ``wandb.Image(torch.rand(3, 16, 16))`` (what torchvision gives)."""
    t = torch.rand(3, 16, 20)
    m = Image(t).to_media()
    im = png(m)
    assert (m.payload["width"], m.payload["height"], im.mode) == (20, 16, "RGB")
    want = np.clip(t.permute(1, 2, 0).numpy().astype(np.float64) * 255, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(im), want)


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


def test_image_values_follow_wandbs_to_uint8() -> None:
    assert np.asarray(png(Image(np.array([[0.0, 0.5, 1.0]])).to_media())).tolist() == [[0, 127, 255]]
    # negatives: min-max scaled to [0, 1] first
    assert np.asarray(png(Image(np.array([[-1.0, 0.0, 1.0]])).to_media())).tolist() == [[0, 127, 255]]
    # past 1: taken as 0..255 and clipped
    assert np.asarray(png(Image(np.array([[3.0, 300.0]])).to_media())).tolist() == [[3, 255]]
    assert np.asarray(png(Image(np.array([[1, 200]], dtype=np.uint8)).to_media())).tolist() == [[1, 200]]


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
        Image(torch.rand(2, 3, 4, 4))
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
    assert Image(chw).sha256 == Image(hwc).sha256 == Image(torch.from_numpy(chw)).sha256
