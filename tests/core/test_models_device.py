"""The ``device`` choice: validation everywhere, and on a CUDA machine the same numbers as on the CPU.

The CUDA tests skip, saying why, where no GPU exists.
"""

from __future__ import annotations

import pytest
import torch

from ptq_core.config import Evaluation, QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.models.device import device_context, fast_layout, moved_copy, resolve_device
from ptq_core.pipeline import Explorer

_EVAL = {f: v for f, v in (("runtime", None),) if f in Evaluation.__dataclass_fields__}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_config_accepts_device_spellings_and_round_trips(device: str) -> None:
    config = QuantConfig(device=device)
    assert config.to_dict()["device"] == device
    assert QuantConfig.from_json(config.to_json()) == config


def test_config_default_device_is_cpu() -> None:
    assert QuantConfig().device == "cpu" and QuantConfig.from_dict({}).device == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps", 0, None])
def test_config_rejects_other_devices(device: object) -> None:
    with pytest.raises(ConfigError, match=r"device: got .*; allowed: cpu, cuda or cuda:N"):
        QuantConfig.from_dict({"device": device})


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="allowed: cpu, cuda, cuda:N"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the error path needs one without")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="device: got 'cuda' but CUDA is not available on this machine; allowed: cpu"):
        resolve_device("cuda")
    explorer = Explorer("digits_mlp")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        explorer.evaluate(QuantConfig(model="digits_mlp", device="cuda", evaluation=Evaluation(**_EVAL)))


def test_moved_copy_on_cpu_is_the_module_itself() -> None:
    module = torch.nn.Linear(2, 2)
    assert moved_copy(module, torch.device("cpu")) is module
    with device_context(torch.device("cpu")):
        assert module(torch.ones(1, 2)).shape == (1, 2)


@needs_cuda
def test_cuda_gives_the_cpu_numbers_and_leaves_the_shared_model_on_cpu() -> None:
    explorer = Explorer("digits_cnn")
    base = QuantConfig(model="digits_cnn", evaluation=Evaluation(**_EVAL))
    cpu = explorer.evaluate(base)
    gpu = explorer.evaluate(base.replace(device="cuda"))
    assert gpu.timing["calibration_cached"] is False  # statistics were collected again, on the GPU
    for p in explorer.prepared().graph_module.parameters():
        assert p.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in explorer.model.parameters())
    # Float32 without TF32: activation ranges agree to float rounding, decisions to a near-tie or two.
    cpu_acts = {a["name"]: a for a in cpu.activations}
    for row in gpu.activations:
        ref = cpu_acts[row["name"]]
        assert row["lo"] == pytest.approx(ref["lo"], rel=1e-4, abs=1e-5)
        assert row["hi"] == pytest.approx(ref["hi"], rel=1e-4, abs=1e-5)
    assert gpu.metrics["fp32_top1"] == pytest.approx(cpu.metrics["fp32_top1"], abs=1 / 360)
    assert gpu.metrics["quant_top1"] == pytest.approx(cpu.metrics["quant_top1"], abs=2 / 360)
    assert gpu.metrics["agreement"] >= 0.99
    assert gpu.metrics["kl_divergence"] == pytest.approx(cpu.metrics["kl_divergence"], rel=0.05, abs=1e-4)


@needs_cuda
def test_cuda_float_reference_matches_cpu_logits() -> None:
    explorer = Explorer("digits_cnn")
    cpu = explorer.float_reference(Evaluation(**_EVAL))
    gpu = explorer.float_reference(Evaluation(**_EVAL), device="cuda")
    assert gpu.logits.device.type == "cpu"
    torch.testing.assert_close(gpu.logits, cpu.logits, rtol=1e-4, atol=1e-4)


def test_fast_layout_stores_image_batches_channels_last_and_leaves_the_rest() -> None:
    images = torch.randn(2, 3, 8, 8)
    fast = fast_layout(images)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not fast.is_contiguous()
    assert torch.equal(fast, images)  # the same values: only the order in memory changes
    for other in (torch.randn(2, 5, 7), torch.randint(0, 9, (2, 3, 8, 8)), torch.randn(4, 10)):  # text, ids, logits
        assert fast_layout(other) is other


def test_a_conv_net_gives_the_same_logits_from_a_channels_last_batch() -> None:
    explorer = Explorer("digits_cnn")
    x = torch.stack([explorer.dataset.evaluation[i][0] for i in range(64)])
    with torch.inference_mode():
        plain, fast = explorer.model(x), explorer.model(fast_layout(x))
    assert torch.allclose(plain, fast, rtol=1e-5, atol=1e-5)  # float summation order only


class _ViewFlatten(torch.nn.Module):
    """A conv net that flattens its feature map with .view(), as much user code does: it cannot take channels-last."""

    def __init__(self, view: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)
        self.view = view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.shape[0], -1) if self.view else torch.flatten(y, 1))


@pytest.mark.parametrize("view", [True, False])
def test_a_model_that_cannot_take_channels_last_keeps_its_layout_and_still_calibrates(view: bool) -> None:
    from ptq_core.calibration import collect_stats
    from ptq_core.graph import prepare

    torch.manual_seed(0)
    model = _ViewFlatten(view).eval()
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 6, 6), torch.zeros(8, dtype=torch.long))
    prepared = prepare(model, data[0][0].unsqueeze(0))
    assert prepared.channels_last is (not view)  # .view() of a channels-last feature map fails: checked, not assumed
    stats = collect_stats(prepared, data, list(range(8)), batch_size=4)
    assert all(s.count > 0 for s in stats.points.values())
    x = torch.randn(2, 3, 6, 6)
    assert prepared.layout(x).is_contiguous(memory_format=torch.channels_last) is (not view)


class _LayoutDependent(torch.nn.Module):
    """Returns one tensor from a contiguous batch and a pair from a channels-last one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return x * 2 if x.is_contiguous() else (x * 2, x)


def test_outputs_of_another_structure_mean_the_model_keeps_its_layout() -> None:
    from ptq_core.models.device import takes_channels_last

    x = torch.randn(2, 3, 4, 4)
    assert not takes_channels_last(_LayoutDependent(), x)
    assert takes_channels_last(torch.nn.Conv2d(3, 2, 3), x)
