"""On a CUDA GPU (`MEDCAD_TEST_GPU=1 pytest -m gpu`; skipped elsewhere, and tests/conftest.py hides GPUs from the
rest of the suite): BatchNorm folding keeps its folds there, `--backend auto` measures the GPU's own backends, and a
run trained there predicts on the GPU as on the CPU. benchmarks/gpu_check.py runs every command end to end there."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and MEDCAD_TEST_GPU=1"),
]


def exact_fp32():
    """cuDNN convolutions without TF32 (on by default: lite0's outputs ran up to 0.02 apart on an H200)."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_batchnorm_folds_on_the_gpu(name: str) -> None:
    import timm

    from medcad.models.bnfold import fold_eval_batchnorm

    net = timm.create_model(name, pretrained=False, num_classes=0).cuda().eval()
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():  # statistics of a trained network, so that the fold changes the weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.randn(4, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad(), exact_fp32():
        plain = net(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = fold_eval_batchnorm(net)
    assert not [w for w in caught if "unfolded" in str(w.message)], [str(w.message) for w in caught]
    assert len(folds) >= 15  # every convolution + BatchNorm pair of the network (resnet18: 20, lite0: 49)
    with torch.no_grad(), exact_fp32():
        folded = net(x)
    folds.remove()
    torch.testing.assert_close(folded, plain, rtol=1e-3, atol=1e-3)


def test_auto_measures_the_gpu_and_predicts_as_the_cpu(tiny_run: Path) -> None:
    from medcad.inference.registry import load_predictor

    gpu = load_predictor(tiny_run, device="cuda")
    choice = gpu.backend_choice
    assert choice["device"] == "cuda" and set(choice["measured"]) == {"torch-fp32", "torch-bf16"}
    assert all("images_per_s" in v for v in choice["measured"].values())
    assert choice["backend"] in choice["measured"] and "measured now" in choice["reason"]
    again = load_predictor(tiny_run, device="cuda").backend_choice
    assert again["backend"] == choice["backend"] and "measured before on this GPU" in again["reason"]
    cpu = load_predictor(tiny_run, backend="torch-fp32", device="cpu")
    images = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    ref = cpu.infer(images, 8)
    on_gpu = load_predictor(tiny_run, backend="torch-fp32", device="cuda").infer(images, 8)
    np.testing.assert_allclose(on_gpu["probabilities"], ref["probabilities"], atol=1e-2)


def test_a_run_trained_on_the_gpu_scores_its_folds_as_predict_does(tiny_run: Path, easy_set: Path) -> None:
    """Trained in bf16 autocast on the GPU, the folds are scored in fp32: predict on the GPU gives their outputs (in
    the GPU's own fp32, TF32 convolutions included)."""
    from conftest import assert_predict_reproduces_fold

    assert_predict_reproduces_fold(tiny_run, easy_set, "cuda", atol=1e-2)
