"""The PyTorch reference networks match the JAX models' parameter counts and output shapes.

The benchmark compares speeds, which only means something if both sides run the same network.
Skipped when torch (the optional extra) is absent.
"""

import jax
import ml_collections
import pytest
from flax import nnx

from mcalc_jax.model import networks

torch = pytest.importorskip("torch")
torch_reference = pytest.importorskip("tools.benchmarks.torch_reference")

MODELS = ("alexnet", "resnet18", "resnet34")


def _jax_param_count(model: str) -> int:
  config = ml_collections.ConfigDict({"model": model, "num_classes": 2, "dtype": "float32"})
  abstract = nnx.eval_shape(lambda: networks.create_model(config, nnx.Rngs(0)))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("model", MODELS)
def test_parameter_count_equals_jax_model(model):
  net = torch_reference.create(model)
  assert torch_reference.param_count(net) == _jax_param_count(model)
  assert torch_reference.param_count(net) == torch_reference.EXPECTED_PARAMS[model]
  torch_reference.check_param_count(model, net)


@pytest.mark.parametrize("model", MODELS)
def test_output_shape(model):
  net = torch_reference.create(model).eval()
  with torch.inference_mode():
    out = net(torch.zeros(3, 1, 112, 112))
  assert out.shape == (3, 2)
  assert out.dtype == torch.float32


def test_unknown_model_raises():
  with pytest.raises(ValueError, match="unknown model"):
    torch_reference.create("vgg16")


def test_preprocessing_matches_the_jax_path():
  """Timed PyTorch inference does the same blur and z-score as `Classifier.probabilities`."""
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from mcalc_jax.model.preprocess import PreprocessOptions, preprocess  # noqa: PLC0415

  images = np.random.default_rng(0).uniform(0, 1, (4, 112, 112, 1)).astype(np.float32)
  expected = preprocess(jnp.asarray(images), PreprocessOptions(blur_sigma=1.0))
  nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
  got = torch_reference.preprocessing(1.0)(nchw).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)
