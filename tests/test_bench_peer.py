"""benchmarks/bench_peer.py builds both detectors at the same sizes (needs the benchmark-only
``peer`` extra: transformers; skipped without it)."""

import pytest


def test_peer_and_query_head_have_the_same_architecture_sizes(load_benchmark):
    pytest.importorskip("transformers")
    bench = load_benchmark("bench_peer")
    peer = bench.peer_model(300, 9)
    head, full = bench.our_models(300, 512, 320)
    config = peer.config
    assert config.num_feature_levels == 5 and config.two_stage and config.with_box_refine
    assert (config.encoder_layers, config.decoder_layers, config.encoder_ffn_dim) == (6, 6, 2048)
    assert len(peer.model.input_proj) == 5  # C2..C5 and one stride-2 level on C5
    assert head.num_queries == 300 and head.branches is None and head.dn_number == 0
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the same ResNet-50, neck, transformer and heads, to within 0.5 % of the parameters
    assert count(head) == pytest.approx(count(peer), rel=0.005)
    trainable = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert trainable(head) == pytest.approx(trainable(peer), rel=0.005)
    assert count(full) > 1.2 * count(head)  # the branches come on top


def test_same_images_for_both(load_benchmark, tmp_path):
    pytest.importorskip("transformers")
    bench = load_benchmark("bench_peer")
    (ours_images, ours_targets), (pixels, labels) = bench.batch(2, 64, 48, "cpu")
    assert pixels.shape == (2, 3, 48, 64) and len(ours_images) == 2
    # the peer's boxes are ours in normalised cxcywh, its labels ours minus one
    b = ours_targets[0]["boxes"][0]
    cx, cy = (b[0] + b[2]) / 2 / 64, (b[1] + b[3]) / 2 / 48
    assert labels[0]["boxes"][0, :2].tolist() == pytest.approx([float(cx), float(cy)])
    assert (labels[0]["class_labels"] == ours_targets[0]["labels"] - 1).all()
