"""The declared contracts: fused loss backends (`losses/head_backend.py`), the shared column layouts
(`losses/layout.py`), decoder pipelines (`data/pipeline.py`) and `UDONLoss`'s spelled-out signature."""

import importlib
import inspect
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import udon_fast
from udon_fast.data import decoders
from udon_fast.data.pipeline import Decoder, DecoderPipeline, EvalPipelineFactory, TrainPipelineFactory
from udon_fast.losses import backends, chunked, head_backend
from udon_fast.losses.head_backend import FusedBackend, HeadBackend, HeadBackward, HeadForward
from udon_fast.losses.layout import MAX_FIELDS, SUM_FIELDS, Head, Partial, Stat

BACKEND_MODULES = {
    "chunked": "udon_fast.losses.chunked",
    "triton": "udon_fast.losses.triton_backend",
    "native": "udon_fast.losses.native_backend",
}


def _parameters(function, drop_self: bool = False) -> list[tuple[str, inspect._ParameterKind, object]]:
    parameters = list(inspect.signature(function).parameters.values())[int(drop_self) :]
    return [(p.name, p.kind, p.default) for p in parameters]


def _backend_module(name: str):
    if name == "triton":
        pytest.importorskip("triton")
    if name == "native" and not backends.status()["native"][0]:
        pytest.skip(f"native backend not built: {backends.status()['native'][1]}")
    return importlib.import_module(BACKEND_MODULES[name])


@pytest.mark.parametrize("name", sorted(BACKEND_MODULES))
def test_every_backend_module_satisfies_the_backend_protocol(name):
    backend = _backend_module(name).BACKEND
    assert isinstance(backend, HeadBackend) and backend.name == name
    for function, contract in ((backend.forward, HeadForward), (backend.backward, HeadBackward)):
        want = _parameters(contract.__call__, drop_self=True)
        assert _parameters(function) == want
        assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in want)
    head_backend.check_backend(backend)


def test_the_registry_holds_the_backends_of_the_available_modules():
    for name in (name for name in BACKEND_MODULES if backends.status()[name][0]):
        assert backends.fused_backend(name) is importlib.import_module(BACKEND_MODULES[name]).BACKEND
    with pytest.raises(ValueError, match="no fused backend 'reference'"):
        backends.fused_backend("reference")


def test_a_backend_off_the_contract_is_refused():
    def positional_forward(e_t, w_t, e_s, w_s, labels, z_y, dz_y, scale, tau_t, tau_s):
        return chunked.forward(
            e_t=e_t, w_t=w_t, e_s=e_s, w_s=w_s, labels=labels, z_y=z_y, dz_y=dz_y, scale=scale, tau_t=tau_t, tau_s=tau_s
        )

    def swapped_backward(*, g_ce_t, g_ce_s, g_kl, e_s, w_s, e_t, w_t, labels, stats, z_y, dz_y, scale, tau_t, tau_s):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="'bad_forward': forward"):
        head_backend.check_backend(FusedBackend("bad_forward", positional_forward, chunked.backward))
    with pytest.raises(TypeError, match="'bad_backward': backward"):
        head_backend.check_backend(FusedBackend("bad_backward", chunked.forward, swapped_backward))
    with pytest.raises(TypeError, match="needs name, forward and backward"):
        head_backend.check_backend(chunked.forward)


def test_fused_ops_and_backend_functions_refuse_positional_tensors():
    e = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    w, labels = torch.randn(5, 8), torch.tensor([0, 4, 2])
    with pytest.raises(TypeError):
        backends.fused_op("chunked")(e, w, None, None, labels, torch.zeros(3, 1), torch.zeros(3, 1), 16.0, 0.1, 0.1)
    with pytest.raises(TypeError):
        chunked.forward(e, w, None, None, labels, torch.zeros(3, 1), torch.zeros(3, 1), 16.0, 0.1, 0.1)


def test_the_layouts_are_one_definition():
    assert [int(s) for s in Stat] == list(range(4)) and [int(p) for p in Partial] == list(range(9))
    assert (Stat.LSE_ZT, Stat.LSE_ZS) == (Head.TEACHER, Head.STUDENT)
    assert len(set(MAX_FIELDS) | set(SUM_FIELDS) | {Partial.KL_NUM}) == len(Partial)
    kernels = pytest.importorskip("udon_fast.kernels.triton_head")
    assert kernels.FORWARD_FIELDS.value == len(Partial) and kernels.STAT_COLUMNS.value == len(Stat)
    assert (kernels.M_A.value, kernels.L_A.value, kernels.KL_NUM.value) == (Partial.M_A, Partial.L_A, Partial.KL_NUM)
    assert (kernels.LSE_A.value, kernels.LSE_B.value) == (Stat.LSE_A, Stat.LSE_B)


def test_udon_loss_module_spells_out_udon_loss_options():
    parameters = inspect.signature(udon_fast.UDONLoss).parameters
    assert {name: p.default for name, p in parameters.items()} == udon_fast.udon_loss.__kwdefaults__
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())
    assert list(parameters) == list(udon_fast.udon_loss.__kwdefaults__)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temperature'"):
        udon_fast.UDONLoss(temperature=0.1)
    with pytest.raises(TypeError):
        udon_fast.UDONLoss("cosface")


def _jpeg(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


DECODERS = [
    pytest.param(
        "dali", marks=pytest.mark.skipif(decoders.dali_import_error() is not None, reason="NVIDIA DALI not importable")
    ),
    "torchvision",
]
OPTIONS = dict(batch_size=2, image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_threads=1, device_id=None)


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_satisfies_the_pipeline_protocol(decoder):
    module = importlib.import_module(decoders._MODULES[decoder], "udon_fast.data")
    assert isinstance(module, Decoder)
    assert _parameters(module.train_pipeline) == _parameters(TrainPipelineFactory.__call__, drop_self=True)
    assert _parameters(module.eval_pipeline) == _parameters(EvalPipelineFactory.__call__, drop_self=True)
    rng = np.random.default_rng(0)
    encoded = [_jpeg(rng, 24, 20), _jpeg(rng, 18, 30)]

    def train_source():
        return (
            encoded,
            np.array([[3], [1]], dtype=np.int64),
            np.array([0.5, 0.0], dtype=np.float32),
            np.array([0.5, 1.0], dtype=np.float32),
            np.array([0, 1], dtype=np.int32),
        )

    class EvalSource:  # as `sources.EvalSource`: callable, and its split (not in shards: no members)
        split = SimpleNamespace(members=None)

        def __call__(self):
            return encoded

    for pipe, shapes in (
        (decoders.train_pipeline(decoder, train_source, **OPTIONS), [(2, 3, 16, 16), (2, 1)]),
        (decoders.eval_pipeline(decoder, EvalSource(), **OPTIONS), [(2, 3, 16, 16)]),
    ):
        assert isinstance(pipe, DecoderPipeline)
        try:
            pipe.schedule_run()
            outputs = pipe.outputs()
        finally:
            pipe.close()
        assert [tuple(t.shape) for t in outputs] == shapes
        assert all(isinstance(t, torch.Tensor) for t in outputs)
