"""benchmarks/gpu_check.py: what it does without a GPU (refuse, clearly) and its file name."""

import torch


def test_refuses_without_cuda(load_benchmark, monkeypatch, capsys, tmp_path):
    gpu_check = load_benchmark("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "Nothing was measured" in err
    assert not out.exists()


def test_results_file_is_named_after_the_gpu(load_benchmark):
    gpu_check = load_benchmark("gpu_check")
    assert gpu_check.device_slug("Tesla T4") == "tesla_t4"
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"


def test_measurements_run_end_to_end_on_cpu_at_the_tiny_profile(load_benchmark):
    """The measuring code itself, at the tiny profile on the CPU in fp32 (CPU bf16 autocast is
    too slow for a unit test; no peak memory on a CPU): every field the GPU run writes."""
    gpu_check = load_benchmark("gpu_check")
    result = gpu_check.measure(gpu_check.Budget(600), steps=1, device="cpu",
                               profiles=("tiny",), amp_modes=(False,))
    row = result["moqam"]["tiny_fp32"]
    assert row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0
    assert row["amp_dtype"] == "float32" and row["input"].startswith("448x253")
    assert 0 < result["deformable_attention_share"]["tiny_fp32_train_step"] < 1
    ratio = result["moqam_vs_moqam_rcnn"]
    assert ratio["size"] == "tiny" and ratio["train_step_ratio"] > 0
    assert result["epoch_estimate"]["tiny_fp32"]["hours_per_epoch_per_10k_images"] > 0
