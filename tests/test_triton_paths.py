"""The paths of the kernels that defaults at small shapes do not take, against the float64 reference: the
persistent main loop over tensor descriptors (and its fallback), K-major operand copies, the gate without its
ReLU output, reductions that are not powers of two; and the host path: ``out=`` that overlaps an input, checks
once per call signature, eager launches without the dispatcher. Under Triton's interpreter on a machine without
CUDA (conftest), like ``test_triton_kernels.py``.
"""

import pytest
import torch
from _kernel_checks import DEVICE, DTYPES, OTHER_CONFIG, assert_close_rel, f64, gen, poison, rand_words, randn

from glai_kernels import reference as ref
from glai_kernels.layout import PATTERN_DTYPE, words_for

per_layer_ops = pytest.importorskip("glai_kernels.per_layer_ops", reason="the Triton kernels need Triton")


# ----------------------------------------------------------------------------- persistent TMA loop, K-major copies
# Tensor descriptors need rows on 16-byte boundaries: these shapes are odd multiples of 8 (fp16 rows of 16
# bytes), none a multiple of a tile, so edge tiles and the K tail still come from the copy engine's zero fill.
TMA_CONFIG = dict(OTHER_CONFIG, BLOCK_K=16, TMA=1)


@pytest.fixture
def descriptors(monkeypatch):
    """Counts the tensor descriptors the launches build (0: the pointer loop ran)."""
    from glai_kernels import per_layer_launch

    if per_layer_launch.TensorDescriptor is None:
        pytest.skip("this Triton has no host tensor descriptors")
    made = []
    real = per_layer_launch.descriptor

    def spy(t, block):
        d = real(t, block)
        made.append(d is not None)
        return d

    monkeypatch.setattr(per_layer_launch, "descriptor", spy)
    return made


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k_major", [0, 1], ids=["in-place", "k-major"])
def test_tma_loop_matches_the_reference(descriptors, dtype, k_major):
    """Every kernel through the persistent loop with tensor descriptors (3 programs walking every tile under
    the interpreter), with operands read in place or as K-major copies, split batch included."""
    M, K, N, r = 88, 40, 104, 2
    g_ = gen(53 + k_major)
    cfg = dict(TMA_CONFIG, K_MAJOR=k_major)
    x, w, b = randn(M, K, dtype=dtype, g=g_), randn(N, K, dtype=dtype, g=g_), randn(N, dtype=dtype, g=g_)
    words, wd, grad = rand_words(M, N // r, g_), rand_words(M, K, g_), randn(M, N, dtype=dtype, g=g_)

    def described(before):  # the op just called built its two operand descriptors
        assert len(descriptors) == before + 2 and all(descriptors), descriptors
        return len(descriptors)

    n = len(descriptors)
    out = per_layer_ops.masked_forward(x, w, b, words, r, config=cfg, out=poison(M, N, dtype=dtype))
    assert_close_rel(out, ref.masked_forward(f64(x), f64(w), f64(b), words, r), dtype, "masked_forward tma")
    n = described(n)
    out = per_layer_ops.backward_data(grad, w, wd, 1, config=cfg, out=poison(M, K, dtype=dtype))
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w), wd, 1), dtype, "backward_data tma")
    n = described(n)
    relu, bits = per_layer_ops.gate(
        x, w, b, config=cfg, out=(poison(M, N, dtype=dtype), poison(M, words_for(N), dtype=PATTERN_DTYPE))
    )
    r_relu, r_bits = ref.gate(f64(x), f64(w), f64(b))
    assert_close_rel(relu, r_relu, dtype, "gate tma")
    assert (bits != r_bits).sum() <= 2  # a unit within rounding of 0 may flip
    n = described(n)
    for splits in (1, 3):
        dw, db = per_layer_ops.backward_weights(
            grad,
            x,
            True,
            config=dict(cfg, SPLIT_K=splits),
            out=(poison(N, K, dtype=dtype), poison(N, dtype=dtype)),
        )
        r_dw, r_db = ref.backward_weights(f64(grad), f64(x), True)
        assert_close_rel(dw, r_dw, dtype, f"dW tma, {splits} splits")
        assert_close_rel(db, r_db, dtype, f"db tma, {splits} splits")
        n = described(n)


def test_tma_falls_back_to_pointers_for_misaligned_operands(descriptors):
    """Rows that do not start on 16 bytes (K = 31 fp32) or a transposed activation cannot be described to the
    copy engine: the same configuration runs the pointer loop, with the same result."""
    M, K, N = 33, 31, 100
    g_ = gen(59)
    h, w, b = randn(M, K, dtype=torch.float32, g=g_), randn(N, K, dtype=torch.float32, g=g_), None
    out = per_layer_ops.masked_forward(
        h, w, b, None, 1, config=TMA_CONFIG, out=poison(M, N, dtype=torch.float32)
    )
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), None, None, 1), torch.float32, "misaligned")
    h2 = randn(M, 40, dtype=torch.float32, g=g_, strided=True)  # column-major-ish view: strides (1, ...)
    w2 = randn(N, 40, dtype=torch.float32, g=g_)
    out = per_layer_ops.masked_forward(
        h2, w2, b, None, 1, config=TMA_CONFIG, out=poison(M, N, dtype=torch.float32)
    )
    assert_close_rel(out, ref.masked_forward(f64(h2), f64(w2), None, None, 1), torch.float32, "strided")
    assert descriptors == []


def test_broadcast_and_overlapping_operands_take_the_pointer_loop(monkeypatch):
    """A tensor descriptor holds positive strides over distinct elements: the gradient of ``y.sum(0)``
    expanded back (strides ``(0, 1)``) and rows that overlap (row stride below the row length) are never
    described, and the kernels read them in place with the reference's result."""
    from glai_kernels import per_layer_launch

    if per_layer_launch.TensorDescriptor is None:
        pytest.skip("this Triton has no host tensor descriptors")
    described = []
    real = per_layer_launch.descriptor

    def spy(t, block):
        described.append((tuple(t.shape), t.stride()))
        return real(t, block)

    monkeypatch.setattr(per_layer_launch, "descriptor", spy)
    M, K, N, r = 88, 40, 104, 2
    g_ = gen(61)
    for dtype in DTYPES:
        w, x = randn(N, K, dtype=dtype, g=g_), randn(M, K, dtype=dtype, g=g_)
        words, wd = rand_words(M, N // r, g_), rand_words(M, K, g_)
        grad = randn(N, dtype=dtype, g=g_).expand(M, N)  # d(y.sum(0))/dy: strides (0, 1)
        flat = randn(8 * M + N, dtype=dtype, g=g_)
        overlapping = flat.as_strided((M, N), (8, 1))  # row i is flat[8 i : 8 i + N]: 16-byte aligned rows
        cfg = dict(TMA_CONFIG, K_MAJOR=0)
        for what, g in (("broadcast", grad), ("overlapping", overlapping)):
            assert g.stride()[0] < N
            out = per_layer_ops.backward_data(g, w, wd, 1, config=cfg, out=poison(M, K, dtype=dtype))
            assert_close_rel(out, ref.backward_data(f64(g), f64(w), wd, 1), dtype, f"backward_data, {what}")
            dw, db = per_layer_ops.backward_weights(
                g, x, True, config=cfg, out=(poison(N, K, dtype=dtype), poison(N, dtype=dtype))
            )
            r_dw, r_db = ref.backward_weights(f64(g), f64(x), True)
            assert_close_rel(dw, r_dw, dtype, f"dW, {what}")
            assert_close_rel(db, r_db, dtype, f"db, {what}")
        xb = randn(K, dtype=dtype, g=g_).expand(M, K)  # one input row repeated
        out = per_layer_ops.masked_forward(xb, w, None, words, r, config=cfg, out=poison(M, N, dtype=dtype))
        assert_close_rel(
            out, ref.masked_forward(f64(xb), f64(w), None, words, r), dtype, "forward, broadcast x"
        )
        per_layer_ops.backward_data(randn(M, N, dtype=dtype, g=g_), w, wd, 1, config=cfg)  # dense: described
    assert described, "dense operands must still be described"
    assert all(s[1] == 1 and s[0] >= shape[1] for shape, s in described), described


# ----------------------------------------------------------------------------- gate without its ReLU output
def test_gate_without_relu_output(monkeypatch):
    """The last structural layer feeds no gate: only its pattern is written; the ReLU output is None."""
    M, K, N = 33, 31, 100
    g_ = gen(61)
    a, w = randn(M, K, dtype=torch.float32, g=g_), randn(N, K, dtype=torch.float32, g=g_)
    b = randn(N, dtype=torch.float32, g=g_)
    expected = ref.gate(f64(a), f64(w), f64(b))[1]
    out = (None, poison(M, words_for(N), dtype=PATTERN_DTYPE))
    relu, words = per_layer_ops.gate(a, w, b, relu_out=False, out=out)
    assert relu is None and words is out[1] and torch.equal(words, expected)
    relu, words = per_layer_ops.gate(a, w, b, relu_out=False)  # eager, allocating
    assert relu is None and torch.equal(words, expected)
    assert torch.equal(torch.ops.glai.gate(a, w, b, False)[1], expected)  # the custom op takes the flag too
    assert ref.gate(a, w, b, relu_out=False)[0] is None
    # structural_patterns asks for the ReLU output of every layer but the last.
    from glai_kernels import structural_patterns

    asked = []
    real = per_layer_ops.gate

    def spy(a, weight, bias, relu_out=True, **kw):
        asked.append(relu_out)
        return real(a, weight, bias, relu_out=relu_out, **kw)

    monkeypatch.setattr(per_layer_ops, "gate", spy)
    w2 = randn(7, N, dtype=torch.float32, g=g_)
    pats = structural_patterns(a, [w, w2], [b, None], backend="triton")
    assert asked == [True, False] and [p.shape for p in pats] == [(M, 4), (M, 1)]
    assert torch.equal(pats[0], expected)


@pytest.mark.parametrize("block_n,r", [(64, 5), (128, 3), (128, 6), (32, 3)])
def test_non_power_of_two_reduction(block_n, r):
    """A reduction that is not a power of two reads the few words each tile spans, without a per-element
    gather; unit j reads structural bit j // r across word and tile edges (41 structural units: the last word
    and the last tile are partial)."""
    M, K, units = 33, 31, 41 * r
    g_ = gen(block_n + r)
    cfg = dict(OTHER_CONFIG, BLOCK_N=block_n)
    h, w = randn(M, K, dtype=torch.float32, g=g_), randn(units, K, dtype=torch.float32, g=g_)
    b = randn(units, dtype=torch.float32, g=g_)
    words = rand_words(M, units // r, g_)
    out = per_layer_ops.masked_forward(
        h, w, b, words, r, config=cfg, out=poison(M, units, dtype=torch.float32)
    )
    assert_close_rel(out, ref.masked_forward(f64(h), f64(w), f64(b), words, r), torch.float32, f"r={r}")
    grad, w2 = randn(M, K, dtype=torch.float32, g=g_), randn(K, units, dtype=torch.float32, g=g_)
    out = per_layer_ops.backward_data(
        grad, w2, words, r, config=cfg, out=poison(M, units, dtype=torch.float32)
    )
    assert_close_rel(out, ref.backward_data(f64(grad), f64(w2), words, r), torch.float32, f"r={r} data")


# ----------------------------------------------------------------------------- host path
def test_out_must_not_overlap_the_inputs():
    M, K, N = 5, 8, 8
    x, w = torch.randn(M, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    with pytest.raises(ValueError, match="masked_forward: out is the input h"):
        per_layer_ops.masked_forward(x, w, None, None, 1, out=x)
    buf = torch.randn(M + N, K, device=DEVICE)
    with pytest.raises(ValueError, match="out overlaps the memory of the input weight"):
        per_layer_ops.masked_forward(x, buf[M - 2 : M - 2 + N], None, None, 1, out=buf[:M])
    g, h = torch.randn(M, N, device=DEVICE), torch.randn(M, K, device=DEVICE)
    with pytest.raises(ValueError, match=r"backward_weights: out\[0\] overlaps the memory of the input g"):
        per_layer_ops.backward_weights(g, h, False, out=(torch.as_strided(g, (N, K), (1, 1)), None))
    with pytest.raises(ValueError, match=r"gate: out\[1\] overlaps the memory of the input a"):
        per_layer_ops.gate(x, w, None, out=(torch.empty(M, N, device=DEVICE), x.view(PATTERN_DTYPE)[:, :1]))
    # Disjoint parts of one buffer are fine.
    res = per_layer_ops.masked_forward(x, buf[:N], None, None, 1, out=buf[N : N + M])
    assert res.data_ptr() == buf[N:].data_ptr()
    dw = torch.randn(N, K, device=DEVICE)
    assert per_layer_ops.backward_weights(g, h, False, out=(dw, None))[0] is dw


def test_checks_run_once_per_signature_and_again_for_a_new_one():
    from glai_kernels import per_layer_launch

    M, K, N = 9, 7, 40
    x, w = torch.randn(M, K, device=DEVICE), torch.randn(N, K, device=DEVICE)
    words = torch.zeros(M, 2, dtype=PATTERN_DTYPE, device=DEVICE)
    per_layer_ops.masked_forward(x, w, None, words, 1)
    before = len(per_layer_launch.LAUNCH_PLANS)
    per_layer_ops.masked_forward(x.clone(), w.clone(), None, words.clone(), 1)  # same signature: no new plan
    assert len(per_layer_launch.LAUNCH_PLANS) == before
    with pytest.raises(ValueError, match="words must have shape"):  # another signature is checked in full
        per_layer_ops.masked_forward(x, w, None, words[:, :1], 1)
    with pytest.raises(ValueError, match="must divide"):
        per_layer_ops.masked_forward(x, w, None, words, 3)
    with pytest.raises(TypeError, match="dtype"):
        per_layer_ops.masked_forward(x, w.double(), None, words, 1)


def test_eager_calls_skip_the_dispatcher_and_compile_keeps_the_custom_ops(monkeypatch):
    """An eager call launches directly (no ``torch.ops.glai`` dispatch, the host time that matters at small
    sizes); while torch.compile traces, the same call goes through the custom op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w = torch.randn(5, 7, device=DEVICE), torch.randn(6, 7, device=DEVICE)
    with Record() as rec:
        direct = per_layer_ops.masked_forward(x, w, None, None, 1)
    assert not any("glai" in op for op in rec.ops), rec.ops
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with Record() as rec:
        through = per_layer_ops.masked_forward(x, w, None, None, 1)
    assert any("glai.masked_forward" in op for op in rec.ops), rec.ops
    assert torch.equal(direct, through)


def test_a_training_step_with_parameters_plans_every_launch_once(monkeypatch):
    """The weights of a training step are Parameters: a repeated step finds every launch's plan in the memo and
    launches directly, never through the custom op (which is for tracing modes) or a new plan."""
    from glai import GLAIMLP
    from glai_kernels import per_layer_launch

    made = []
    new_plan = per_layer_launch.new_plan
    monkeypatch.setattr(per_layer_launch, "new_plan", lambda op, *a: made.append(op) or new_plan(op, *a))
    model = GLAIMLP(13, [40, 33], 5, backend="triton", fused=False).to(DEVICE).freeze()
    x = torch.randn(31, 13, device=DEVICE)
    model(x).square().sum().backward()
    assert {"masked_forward", "backward_data", "backward_weights"} <= set(made)
    made.clear()
    model(x).square().sum().backward()
    assert made == [], f"a repeated step planned {made} again"
    weight = next(model.parameters())
    assert type(weight) is torch.nn.Parameter and not per_layer_launch.use_custom_op(x, weight)
