import pytest
import torch

from glai_kernels import pack_patterns, unit_mask, unpack_patterns, words_for
from glai_kernels.layout import unit_gates


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100])
def test_round_trip_and_zero_padding(n):
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(5, 3, n, generator=g) > 0.5
    words = pack_patterns(mask)
    assert words.dtype == torch.int32 and words.shape == (5, 3, words_for(n))
    assert torch.equal(unpack_patterns(words, n), mask)
    # Every padding bit past n is zero, even with every unit firing.
    full = pack_patterns(torch.ones(n, dtype=torch.bool))
    tail = n % 32
    if tail:
        assert int(full[-1]) == (1 << tail) - 1
    assert all(int(w) == -1 for w in full[: n // 32])  # a full word is all ones, sign bit included


def test_bit_order_by_hand():
    # Units 0, 2 and 31 of word 0; unit 32 is bit 0 of word 1; unit 35 is bit 3 of word 1.
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 2, 31, 32, 35]] = True
    words = pack_patterns(mask)
    assert words.tolist() == [1 + 4 - 2**31, 1 + 8]


def test_unpack_rejects_wrong_word_count_and_dtype():
    with pytest.raises(ValueError, match="expected 2 words for n=33, got 1 words"):
        unpack_patterns(torch.zeros(4, 1, dtype=torch.int32), 33)
    with pytest.raises(TypeError, match="int32"):
        unpack_patterns(torch.zeros(4, 2, dtype=torch.int64), 33)
    with pytest.raises(ValueError, match="0-d"):
        pack_patterns(torch.tensor(True))


@pytest.mark.parametrize("r", [1, 2, 4])
def test_unit_j_reads_structural_bit_j_div_r(r):
    structural = torch.rand(7, 9) > 0.5
    gates = unit_mask(pack_patterns(structural), 9 * r, r)
    for j in range(9 * r):
        assert torch.equal(gates[:, j], structural[:, j // r])


def test_unit_mask_rejects_a_reduction_that_does_not_divide():
    words = pack_patterns(torch.rand(7, 3) > 0.5)
    with pytest.raises(ValueError, match="reduction=3 must divide the number of units, got n=10"):
        unit_mask(words, 10, 3)  # 3 bits x 3 would gate 9 units, not 10
    with pytest.raises(ValueError, match="positive int, got 0"):
        unit_mask(words, 9, 0)


@pytest.mark.parametrize("n, r", [(1, 1), (31, 1), (33, 3), (100, 1), (64, 4)])
def test_unit_gates_table_lookup_equals_the_bit_shifts(n, r):
    g = torch.Generator().manual_seed(n * r)
    # Random words, sign bits included, with leading dims; then a column slice (last stride 1: the table path)
    # and a column-major copy (last stride not 1: the shift path).
    words = torch.randint(-(2**31), 2**31 - 1, (2, 5, words_for(n) + 1), generator=g, dtype=torch.int32)
    tail = n % 32
    for view in (words[..., :-1], words.transpose(-1, -2).contiguous().transpose(-1, -2)[..., 1:]):
        if tail:  # padding bits past n are 0 in any packed pattern
            view = view.clone()
            view[..., -1] &= (1 << tail) - 1
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            gates = unit_gates(view, n * r, r, dtype)
            assert gates.dtype == dtype and gates.shape == (2, 5, n * r)
            assert torch.equal(gates, unit_mask(view, n * r, r).to(dtype))


@pytest.mark.parametrize("r", [1, 3])
def test_unit_gates_under_vmap_equal_the_eager_gates(r):
    """Under a torch.func transform the words cannot be viewed as bytes (no batching rule for a dtype view on
    some torch versions): the bits are unpacked by shifts there, with the same gates, padding bits ignored."""
    g = torch.Generator().manual_seed(r)
    n = 33 * r
    words = torch.randint(-(2**31), 2**31, (5, 4, words_for(n // r)), generator=g, dtype=torch.int64)
    words = words.to(torch.int32)
    eager = unit_gates(words, n, r, torch.float32)
    mapped = torch.func.vmap(lambda w: unit_gates(w, n, r, torch.float32))(words)
    assert torch.equal(mapped, eager)
    bits = ((words[..., torch.arange(n) // r // 32] >> (torch.arange(n) // r % 32)) & 1).float()
    assert torch.equal(eager, bits)
