"""The three networks: torchvision parameter counts, output shapes and compute dtype."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from mcalc_jax.model import models, networks

# torchvision's counts (3 input channels, 1000 classes) minus the first conv's two extra input
# channels and minus the 998 extra head outputs. BatchNorm scale and bias count (torch
# parameters()); running statistics do not.
#   alexnet:  61,100,840 - 64*2*11*11 - (4096*998 + 998)          = 56,996,546
#   resnet18: 11,689,512 - 64*2*7*7   - (512*998 + 998)           = 11,171,266
#   resnet34: 21,797,672 - 64*2*7*7   - (512*998 + 998)           = 21,279,426
EXPECTED_PARAMS = {"alexnet": 56_996_546, "resnet18": 11_171_266, "resnet34": 21_279_426}


def _config(model: str, dtype: str = "float32") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"model": model, "num_classes": 2, "dtype": dtype})


def _abstract_model(model: str, dtype: str = "float32") -> nnx.Module:
  return nnx.eval_shape(lambda: networks.create_model(_config(model, dtype), nnx.Rngs(0)))


@pytest.mark.parametrize("model", sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_torchvision(model):
  params = nnx.state(_abstract_model(model), nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(params)) == EXPECTED_PARAMS[model]


@pytest.mark.parametrize("model", sorted(EXPECTED_PARAMS))
@pytest.mark.parametrize("train", [True, False])
def test_two_logits_per_patch(model, train):
  def forward(images):
    net = networks.create_model(_config(model), nnx.Rngs(0))
    return networks.call(net, model, images, train=train, dropout_key=jax.random.key(0))

  logits = jax.eval_shape(forward, jax.ShapeDtypeStruct((3, 112, 112, 1), jnp.float32))
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32


def test_bfloat16_computes_in_bfloat16_with_float32_params():
  def forward(images):
    net = networks.create_model(_config("resnet18", "bfloat16"), nnx.Rngs(0))
    return nnx.state(net, nnx.Param), net.stem(images), net(images, train=False)

  params, features, logits = jax.eval_shape(
    forward, jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.float32)
  )
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  assert features.dtype == jnp.bfloat16
  assert logits.dtype == jnp.float32  # logits go to the loss in float32


def test_adaptive_avg_pool_spreads_a_small_map_like_torch():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)  # AlexNet's 2x2 map for a 112x112 patch
  pooled = models.adaptive_avg_pool(x, 6)[0, :, :, 0]
  np.testing.assert_array_equal(pooled, np.kron(np.arange(4.0).reshape(2, 2), np.ones((3, 3))))


def test_adaptive_avg_pool_is_identity_at_6x6_and_averages_larger_maps():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  np.testing.assert_allclose(models.adaptive_avg_pool(x, 6), x, rtol=1e-6)
  np.testing.assert_allclose(
    models.adaptive_avg_pool(x, 3), nnx.avg_pool(x, (2, 2), (2, 2)), rtol=1e-5
  )


def test_unknown_model_is_rejected():
  with pytest.raises(ValueError, match="resnet50"):
    networks.create_model(_config("resnet50"), nnx.Rngs(0))


@pytest.mark.parametrize(
  ("model", "front_end", "params"),
  [("tophat", "", 30), ("specknet", "tophat", 17_034), ("alexnet", "tophat", 57_019_786)],
)
def test_the_floor_and_the_front_end_networks_give_two_logits(model, front_end, params):
  config = ml_collections.ConfigDict(
    {
      "model": model,
      "num_classes": 2,
      "dtype": "float32",
      "front_end": front_end,
      "field_of_view_mm": 11.2,
      "preprocess": {"input_size": 112},
    }
  )

  def forward(images):
    net = networks.create_model(config, nnx.Rngs(0))
    logits = networks.call(net, model, images, train=True, dropout_key=jax.random.key(0))
    return nnx.state(net, nnx.Param), logits

  state, logits = jax.eval_shape(forward, jax.ShapeDtypeStruct((3, 112, 112, 1), jnp.float32))
  assert logits.shape == (3, 2) and logits.dtype == jnp.float32
  assert sum(x.size for x in jax.tree.leaves(state)) == params


def test_a_front_end_is_refused_before_the_floor():
  config = ml_collections.ConfigDict(
    {"model": "tophat", "num_classes": 2, "dtype": "float32", "front_end": "tophat"}
  )
  with pytest.raises(ValueError, match="takes no front end"):
    networks.create_model(config, nnx.Rngs(0))


def test_an_input_too_small_for_alexnet_says_so():
  model = networks.get("alexnet").factory(2, dtype=jnp.float32, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="too small for this network"):
    model(jnp.zeros((1, 56, 56, 1)), train=False)
