"""A replay's sums of cotangents at slots that many weighted sums read (each layer's mixture of
every earlier output, as in DLCL and DenseFormer): added into the rows of one array, one
addition a weighted sum, they give the bits of the tape's additions, one a slot."""

import functools
import operator

import numpy as np
import pytest

import lnref
from lnref.autograd import mixing_ops, mixture_rows, ops, value_and_grad
from lnref.autograd.primitive import PRIMITIVES, Primitive
from lnref.autograd.replay import Replayer
from lnref.autograd.timing import TimeSplit


def mixture_chain(x, *weights):
    """Each step a weighted sum of every value so far, the input first: the k-th takes k terms."""
    history = [x]
    for w in weights:
        history.append(ops.tanh(ops.weighted_sum(w, *history)))
    return ops.sum(history[-1] * history[-1])


def chain_inputs(terms, dtype):
    rng = np.random.default_rng(terms)
    x = rng.standard_normal((2, 3, 4)).astype(dtype)
    return [x, *(rng.standard_normal(k).astype(dtype) for k in range(1, terms + 1))]


def replayed_and_taped(fn, arrays):
    """(the replayed pass, its program) and the taped pass of ``fn`` at ``arrays``."""
    replayer = Replayer()
    differentiate = [True] * len(arrays)
    replayer.value_and_grad("key", fn, arrays, differentiate)  # traced
    replayed = replayer.value_and_grad("key", fn, arrays, differentiate)
    return replayed, replayer.programs["key"], value_and_grad(fn)(*arrays)


def assert_same_bits(replayed, taped):
    (out, grads), (taped_out, taped_grads) = replayed, taped
    assert out.value == taped_out
    for mine, theirs in zip(grads, taped_grads, strict=True):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("terms", [2, 9, 20])
def test_weighted_sums_of_1_to_n_terms_summed_in_rows_give_the_bits_of_the_tape(terms, dtype):
    replayed, program, taped = replayed_and_taped(mixture_chain, chain_inputs(terms, dtype))
    assert len(program._mixtures_in_rows) == terms  # the rows path ran
    assert_same_bits(replayed, taped)


def test_a_slot_read_after_its_first_weighted_sum_keeps_the_additions_one_a_slot():
    def chain_with_a_late_reader(x, *weights):
        history = [x]
        for w in weights:
            history.append(ops.tanh(ops.weighted_sum(w, *history)))
        return ops.sum(history[-1] * history[0])  # the input read after every weighted sum

    replayed, program, taped = replayed_and_taped(chain_with_a_late_reader, chain_inputs(5, np.float64))
    assert program._mixtures_in_rows == frozenset()
    assert_same_bits(replayed, taped)


@pytest.mark.parametrize(
    "terms_of_each, other_reads",
    [
        ([(0, 1), (0,)], []),  # fewer terms than the weighted sum before
        ([(0,), (1, 0)], []),  # not the first of the newest's terms
        ([(0,), (0, 1)], [(1, 0)]),  # slot 0 read after its first weighted sum
    ],
)
def test_weighted_sums_not_all_first_parts_of_one_list_are_not_summed_in_rows(terms_of_each, other_reads):
    steps = [("weighted_sum", (100 + i, *terms), {}, 200 + i) for i, terms in enumerate(terms_of_each)]
    for after, slot in other_reads:
        steps.insert(after + 1, ("tanh", (slot,), {}, 300 + after))
    assert mixture_rows.mixtures_in_rows(steps, output_slot=999) == frozenset()


def test_weighted_sums_each_a_first_part_of_the_newest_are_summed_in_rows():
    steps = [
        ("tanh", (0,), {}, 1),  # read before any weighted sum takes it
        ("weighted_sum", (10, 0), {}, 2),
        ("weighted_sum", (11, 0, 2), {}, 3),
        ("weighted_sum", (12, 0, 2), {}, 4),
        ("weighted_sum", (13, 0, 2, 4), {}, 5),
    ]
    assert mixture_rows.mixtures_in_rows(steps, output_slot=5) == frozenset({1, 2, 3, 4})


@pytest.mark.parametrize("scheme", ["dlcl", "denseformer"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_schemes_mixtures_over_every_layer_replay_in_rows_with_the_bits_of_the_tape(scheme, dtype):
    replaying = lnref.build(scheme, n_layers=6, dtype=dtype)
    x, dy, memory = replaying.sample_inputs(seed=3)
    taped = replaying.value_and_grad(x, dy, memory)  # the first pass: taped
    replayed = replaying.value_and_grad(x, dy, memory)
    assert len(next(iter(replaying.replayer.programs.values()))._mixtures_in_rows) == 6
    (loss_a, grads_a), (loss_b, grads_b) = replayed, taped
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name], err_msg=name)


def test_a_weighted_sum_vjp_swapped_after_tracing_is_the_one_a_replay_calls(monkeypatch):
    """Rows are for weighted_sum as lnref defines it: a broken VJP put in its place runs."""
    arrays = chain_inputs(5, np.float64)
    replayer, differentiate = Replayer(), [True] * len(arrays)
    _, good = replayer.value_and_grad("key", mixture_chain, arrays, differentiate)
    defined = PRIMITIVES["weighted_sum"]
    zeroed = Primitive("weighted_sum", defined.forward, lambda dout, res: tuple(0 * d for d in defined.vjp(dout, res)))
    monkeypatch.setitem(PRIMITIVES, "weighted_sum", zeroed)
    _, broken = replayer.value_and_grad("key", mixture_chain, arrays, differentiate)
    assert np.any(good[0] != 0) and np.all(broken[0] == 0)


def test_timed_weighted_sums_still_sum_in_rows_with_the_bits_of_the_tape(monkeypatch):
    into_rows, calls = mixture_rows.vjp_into_rows, []
    monkeypatch.setattr(mixture_rows, "vjp_into_rows", lambda *args: calls.append(1) or into_rows(*args))
    arrays = chain_inputs(9, np.float64)
    replayer, differentiate = Replayer(), [True] * len(arrays)
    replayer.value_and_grad("key", mixture_chain, arrays, differentiate)  # traced
    with TimeSplit():
        replayed = replayer.value_and_grad("key", mixture_chain, arrays, differentiate)
    assert len(calls) == 9
    assert_same_bits(replayed, value_and_grad(mixture_chain)(*arrays))


def test_rows_that_drop_a_weighted_sums_cotangents_fail_the_bits_check(monkeypatch):
    """Negative control: a sum in rows that leaves out one weighted sum's addition."""
    into_rows = mixture_rows.vjp_into_rows
    calls = []

    def dropping_the_second(rows, dout, residuals, arg_slots, grads, needs):
        calls.append(arg_slots)
        if len(calls) == 2:
            return rows
        return into_rows(rows, dout, residuals, arg_slots, grads, needs)

    monkeypatch.setattr(mixture_rows, "vjp_into_rows", dropping_the_second)
    replayed, _, taped = replayed_and_taped(mixture_chain, chain_inputs(9, np.float64))
    with pytest.raises(AssertionError):
        assert_same_bits(replayed, taped)


def test_rows_added_in_another_order_fail_the_bits_check(monkeypatch):
    """Negative control: the input's cotangents, one from each weighted sum, added oldest first
    ((c_1 + c_2) + ...), where the tape adds them newest first."""
    into_rows = mixture_rows.vjp_into_rows
    for_the_input = []

    def oldest_first_for_the_input(rows, dout, residuals, arg_slots, grads, needs):
        for_the_input.append(mixing_ops.weighted_sum_vjp_rows(dout, residuals)[1][0])
        rows = into_rows(rows, dout, residuals, arg_slots, grads, needs)
        if len(arg_slots) == 2:  # the oldest weighted sum, the input its one term: the last to add
            rows[0] = functools.reduce(operator.add, reversed(for_the_input))
        return rows

    monkeypatch.setattr(mixture_rows, "vjp_into_rows", oldest_first_for_the_input)
    (out, grads), _, (taped_out, taped_grads) = replayed_and_taped(mixture_chain, chain_inputs(9, np.float64))
    for mine, theirs in zip(grads[1:], taped_grads[1:], strict=True):  # only the input's sum changed...
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(grads[0], taped_grads[0], rtol=1e-12)  # ...and only in its rounding
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(grads[0], taped_grads[0])
