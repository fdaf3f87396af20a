"""The tape made visible: its text trace, its Graphviz graph and drawing."""

import shutil

import numpy as np
import pytest

from lnref.autograd import Tape, Tensor, ops
from lnref.autograd import tape as tape_module


@pytest.fixture
def recorded():
    """A linear map, a ReLU, a LayerNorm and a loss, recorded; the leaves by name."""
    rng = np.random.default_rng(0)
    leaves = {
        "x": Tensor(rng.standard_normal((2, 3)), requires_grad=True),
        "W": Tensor(rng.standard_normal((3, 4)), requires_grad=True),
        "b": Tensor(np.zeros(4), requires_grad=True),
        "gamma": Tensor(np.ones(4), requires_grad=True),
        "beta": Tensor(np.zeros(4), requires_grad=True),
    }
    with Tape() as tape:
        h = ops.relu(ops.linear(leaves["x"], leaves["W"], leaves["b"]))
        y = ops.layer_norm(h, leaves["gamma"], leaves["beta"], eps=1e-5)
        ops.sum(y * rng.standard_normal((2, 4)))
    return tape, leaves


def rows(text):
    return text.splitlines()[1:-1]


def test_format_lists_the_records_oldest_first_with_their_ops(recorded):
    tape, leaves = recorded
    ops_shown = [row.split()[1] for row in rows(tape.format(leaves))]
    assert ops_shown == ["linear", "relu", "layer_norm(eps=1e-05)", "mul", "sum"]


def test_format_names_inputs_by_the_record_that_made_them_or_by_the_given_names(recorded):
    tape, leaves = recorded
    linear, relu, layer_norm, *_ = rows(tape.format(leaves))
    assert "x f64[2,3], W f64[3,4], b f64[4]" in linear
    assert "#0 f64[2,4]" in relu
    assert "#1 f64[2,4], gamma f64[4], beta f64[4]" in layer_norm


def test_unnamed_leaves_are_numbered_in_order_of_first_use(recorded):
    tape, _ = recorded
    linear = rows(str(tape))[0]
    assert "leaf0 f64[2,3], leaf1 f64[3,4], leaf2 f64[4]" in linear


def test_a_tensor_that_needs_no_gradient_is_shown_as_a_constant():
    x, c = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3))
    with Tape() as tape:
        x * c
    assert "leaf0 f64[3], const f64[3]" in str(tape)


def test_format_shows_the_output_shape_and_the_residuals_kept(recorded):
    tape, leaves = recorded
    layer_norm = rows(tape.format(leaves))[2]
    # the output, then what LayerNorm keeps: its input rows, gamma, each row's mean and 1/sigma
    assert layer_norm.endswith("f64[2,4]  f64[2,4] f64[4] f64[2] f64[2]")
    total = rows(tape.format(leaves))[4]  # a scalar out; sum keeps the shape, the axes and keepdims
    assert " f64[] " in total and total.endswith("(2, 4) (0, 1) False")


def test_the_last_line_counts_records_and_the_memory_the_residuals_hold(recorded):
    tape, leaves = recorded
    distinct = tape_module._kept_buffers(tape.records)
    last = tape.format(leaves).splitlines()[-1]
    assert last == f"5 records; the residuals hold {len(distinct)} arrays, {sum(a.nbytes for a in distinct)} B"


def test_an_array_kept_twice_or_as_a_view_counts_once():
    x = Tensor(np.ones((3, 4)), requires_grad=True)
    with Tape() as tape:
        y = x * x  # mul keeps (x, x): the same array twice
        ops.layer_norm(y, np.ones(4), np.zeros(4))  # keeps a (3, 4) view of y's array, which mul made
    kept = tape_module._kept_buffers(tape.records)
    # six arrays kept: x twice, the rows view of y, gamma, mean, 1/sigma; five distinct memories
    assert len(kept) == 5
    assert tape.format().splitlines()[-1].endswith("the residuals hold 5 arrays, 272 B")  # 96 + 96 + 32 + 24 + 24


def test_repr_is_one_short_line(recorded):
    tape, _ = recorded
    assert repr(tape) == "<Tape of 5 records>"


def test_to_dot_draws_an_edge_from_each_producer_and_named_leaf(recorded):
    tape, leaves = recorded
    dot = tape.to_dot(leaves)
    assert dot.startswith("digraph tape {") and dot.endswith("}")
    for edge in ('"x" -> r0;', '"W" -> r0;', "r0 -> r1;", "r1 -> r2;", '"gamma" -> r2;', "r2 -> r3;", "r3 -> r4;"):
        assert edge in dot
    assert dot.count("[shape=ellipse") == 5  # the five leaves, each drawn once


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_renders_an_svg_with_graphviz(recorded, tmp_path):
    tape, leaves = recorded
    path = tape.draw(tmp_path / "tape.svg", names=leaves)
    assert path.read_text().lstrip().startswith(("<?xml", "<svg"))
    assert "layer_norm" in path.read_text()


def test_draw_without_graphviz_says_so_in_one_line(recorded, tmp_path, monkeypatch):
    tape, _ = recorded
    monkeypatch.setattr(tape_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs Graphviz's dot program"):
        tape.draw(tmp_path / "tape.svg")
