"""benchmarks/bench_cpu_determinism.py: the summary of its variants, and the provenance field
that says which vector instructions a run's kernels used."""

from __future__ import annotations


def test_summary_of_variants(load_benchmark):
    bench = load_benchmark("bench_cpu_determinism")
    results = {"native": {"losses": [3.0, 2.5, 2.0]}, "native_repeat": {"losses": [3.0, 2.5, 2.0]},
               "aten_avx2": {"losses": [3.0, 2.5, 2.1]}, "both_avx2": {"losses": [3.1, 2.4, 1.9]}}
    summary = bench.summarise(results)
    assert summary["repeat_identical"] is True
    assert summary["variants_differing_from_native"] == ["aten_avx2", "both_avx2"]
    assert summary["first_different_step"] == {"native_repeat": None, "aten_avx2": 3, "both_avx2": 1}
    assert summary["last_step_loss_range"] == [1.9, 2.1]
    results["native_repeat"]["losses"] = [3.0, 2.5, 2.0001]
    assert bench.summarise(results)["repeat_identical"] is False


def test_provenance_names_the_kernels(load_benchmark, monkeypatch):
    import torch

    common = load_benchmark("_common")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = common.provenance()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["kernel_pins"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
