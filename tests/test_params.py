import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from impls import DCNv3Params
from impls.params import _accepted, _check_one_by_one
from parity import strategies


def make(**overrides):
    values = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
                  dilation_h=1, dilation_w=1, group=2, group_channels=4)
    values.update(overrides)
    return DCNv3Params(**values)


def test_points_and_channels():
    assert make().points == 9
    assert make(remove_center=True).points == 8
    assert make(kernel_h=2, kernel_w=5).points == 10
    assert make(group=3, group_channels=5).channels == 15


def test_output_size_follows_the_contract():
    assert make().output_size(7, 9) == (7, 9)
    assert make(stride_h=2, pad_h=0, dilation_w=2, pad_w=2).output_size(8, 8) == (3, 8)
    assert make(kernel_h=5, kernel_w=1, pad_h=0, pad_w=0).output_size(5, 4) == (1, 4)


def test_kernel_points_are_x_major_and_skip_the_centre():
    assert make(kernel_h=2, kernel_w=3).kernel_points() == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    points = make(remove_center=True).kernel_points()
    assert (1, 1) not in points and len(points) == 8 and points[4] == (1, 2)


@pytest.mark.parametrize("name", ["kernel_h", "kernel_w", "stride_h", "stride_w", "dilation_h",
                                  "dilation_w", "group", "group_channels"])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes_are_rejected(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be positive, got {value}"):
        make(**{name: value})


@pytest.mark.parametrize("name", ["pad_h", "pad_w"])
def test_negative_padding_is_rejected(name):
    with pytest.raises(ValueError, match=rf"{name} must be non-negative, got -1"):
        make(**{name: -1})


@pytest.mark.parametrize("kernel", [(3, 5), (2, 2), (4, 4)])
def test_remove_center_needs_a_square_odd_kernel(kernel):
    with pytest.raises(ValueError, match=rf"remove_center .* kernel_h={kernel[0]}, kernel_w={kernel[1]}"):
        make(kernel_h=kernel[0], kernel_w=kernel[1], remove_center=True)


def test_remove_center_needs_more_than_one_point():
    with pytest.raises(ValueError, match=r"remove_center with a 1x1 kernel leaves no sampling point \(P = 0\)"):
        make(kernel_h=1, kernel_w=1, pad_h=0, pad_w=0, remove_center=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_offset_scale_must_be_finite(value):
    with pytest.raises(ValueError, match=rf"offset_scale must be finite, got {value}"):
        make(offset_scale=value)


@pytest.mark.parametrize("value", [1.5, "3", True])
def test_sizes_must_be_integers(value):
    with pytest.raises(ValueError, match="kernel_h must be an integer"):
        make(kernel_h=value)


def test_empty_output_is_rejected_with_the_sizes():
    with pytest.raises(ValueError, match=r"H=2, W=9\) gives an empty output \(Ho=-2"):
        make(kernel_h=5, pad_h=0).output_size(2, 9)


def test_params_are_frozen_and_hashable():
    params = make()
    assert hash(params) == hash(make())
    with pytest.raises(AttributeError):
        params.group = 3


@st.composite
def operands(draw):
    """Tensors shaped for drawn params, then sometimes one of them changed: a dimension off by one, another
    dtype or rank, or an empty output (a window larger than the padded image)."""
    p = draw(strategies.params())
    batch, height, width = draw(st.integers(0, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    out_h, out_w = ((height + 2 * p.pad_h - (p.dilation_h * (p.kernel_h - 1) + 1)) // p.stride_h + 1,
                    (width + 2 * p.pad_w - (p.dilation_w * (p.kernel_w - 1) + 1)) // p.stride_w + 1)
    shapes = {"input": [batch, height, width, p.channels],
              "offset": [batch, out_h, out_w, p.group * p.points * 2],
              "mask": [batch, out_h, out_w, p.group * p.points]}
    dtypes = dict.fromkeys(shapes, draw(st.sampled_from([torch.float32, torch.float16, torch.float64])))
    change = draw(st.sampled_from(["none", "dimension", "dtype", "rank"]))
    name = draw(st.sampled_from(list(shapes)))
    if change == "dimension":
        shapes[name][draw(st.integers(0, 3))] += draw(st.sampled_from([-1, 1]))
    elif change == "dtype":
        dtypes[name] = torch.bfloat16
    elif change == "rank":
        shapes[name] = shapes[name][:3]
    tensors = [torch.empty([max(size, 0) for size in shapes[n]], dtype=dtypes[n], device="meta") for n in shapes]
    return (*tensors, p, draw(st.sampled_from([None, (torch.float32, torch.float64)])))


@given(operands())
def test_the_fast_and_the_thorough_checks_accept_the_same_inputs(case):
    """validate's one-expression path accepts exactly what the named checks accept, with the same (Ho, Wo)."""
    input, offset, mask, p, dtypes = case
    fast = _accepted(input, offset, mask, p, dtypes)
    try:
        thorough = _check_one_by_one(input, offset, mask, p, dtypes, "")
    except ValueError:
        thorough = None
    assert fast == thorough
