"""One benchmark per op, provider, shape and dtype of the grid (see ``bench/providers.py``)."""

from bench import harness, providers


def test_op(benchmark, case, device):
    benchmark.group = f"{case.op} {case.dtype}"
    fn, make = providers.build(case, device)
    sets = harness.input_sets(make, device)
    times = harness.measure(benchmark, fn, sets, device)
    row = harness.record(
        case.op, case.provider, case.batch, case.in_f, case.out_f, case.r, case.dtype, times, device
    )
    benchmark.extra_info.update({k: row[k] for k in ("median", "p20", "p80", "unit", "tflops", "gbps")})
