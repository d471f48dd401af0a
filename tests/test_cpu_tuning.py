"""CPU speed settings: chunked convolutions and inference keep the plain path's numbers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mcalc_jax.base import parallel
from mcalc_jax.configs import default
from mcalc_jax.model import cpu_tuning, inference, networks


def _config(model: str, **cpu: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({"model": model, "num_classes": 2, "dtype": "float32"})
  config.cpu_tuning = ml_collections.ConfigDict({"conv_chunk": -1, "inference_chunk": -1} | cpu)
  return config


def test_batch_chunked_convolutions_give_the_whole_batch_logits_and_gradients():
  images = jax.random.uniform(jax.random.key(1), (20, 64, 64, 1))  # 20: the last chunk is ragged
  labels = jnp.arange(20) % 2

  def logits_and_grads(chunk: int):
    config = _config("resnet18", conv_chunk=chunk)
    net = networks.create_model(config, nnx.Rngs(0))

    def loss(net):
      logits = net(images, train=True)
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(20), labels]), logits

    return nnx.grad(loss, has_aux=True)(net)

  grads, logits = logits_and_grads(0)
  chunked_grads, chunked_logits = logits_and_grads(8)
  np.testing.assert_allclose(chunked_logits, logits, atol=1e-5)
  for whole, chunked in zip(jax.tree.leaves(grads), jax.tree.leaves(chunked_grads), strict=True):
    np.testing.assert_allclose(chunked, whole, atol=1e-5 * float(jnp.max(jnp.abs(whole))) + 1e-7)


def test_conv_chunks_are_on_for_one_cpu_device_and_off_when_sharded(monkeypatch):
  assert cpu_tuning.conv_chunk(_config("resnet18")) == cpu_tuning.CPU_CONV_CHUNK
  assert cpu_tuning.conv_chunk(_config("alexnet", conv_chunk=0)) == 0
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  assert cpu_tuning.conv_chunk(_config("resnet18")) == 0


@pytest.mark.parametrize("model", ["alexnet", "resnet18"])
def test_inference_in_chunks_equals_the_whole_batch(model):
  """The CPU fast path (chunks of a few images) keeps the plain path's numbers."""
  config = default.get_config(f"model={model}")
  if model != "alexnet":  # AlexNet's classifier needs the full 112x112 input
    config.patch_size = config.preprocess.input_size = 32
  graphdef, params, stats = nnx.split(
    networks.create_model(config, nnx.Rngs(0)), nnx.Param, nnx.BatchStat
  )
  variables = {"params": params, "batch_stats": stats}
  options = inference.PreprocessOptions.from_config(config)
  size = config.patch_size
  images = np.random.default_rng(0).uniform(size=(10, size, size, 1)).astype(np.float32)
  whole = inference.probabilities(graphdef, variables, images, options, 0)
  for chunk in (1, 4, 16):  # 4 leaves a ragged last chunk, padded; 16 is more than the batch
    chunked = inference.probabilities(graphdef, variables, images, options, chunk)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_inference_chunk_is_per_network_on_one_cpu_and_off_when_sharded():
  one = parallel.make_mesh(jax.devices()[:1])
  assert inference.inference_chunk(_config("resnet18"), one) == 16
  assert inference.inference_chunk(_config("alexnet"), one) == 64
  assert inference.inference_chunk(_config("resnet18", inference_chunk=0), one) == 0
  assert inference.inference_chunk(_config("resnet18", inference_chunk=8), one) == 8
  if jax.device_count() > 1:
    assert inference.inference_chunk(_config("resnet18"), parallel.make_mesh()) == 0
