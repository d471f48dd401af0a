"""The benchmarks' model of the networks: the layers they time are the layers the models have."""

from collections import Counter

import ml_collections
import pytest
from flax import nnx

from mcalc_jax.model import networks
from tools.benchmarks import networks as benchmark


@pytest.mark.parametrize("model", ["resnet18", "resnet34"])
def test_resnet_convs_are_the_models_convolutions(model):
  config = ml_collections.ConfigDict({"model": model, "num_classes": 2, "dtype": "float32"})
  net = nnx.eval_shape(lambda: networks.create_model(config, nnx.Rngs(0)))
  kernels = Counter(
    (node.kernel.shape, node.strides, node.padding)
    for _, node in nnx.iter_graph(net)
    if isinstance(node, nnx.Conv)
  )
  listed = Counter(
    ((k, k, cin, cout), (stride, stride), ((pad, pad), (pad, pad)))
    for _, cin, cout, k, stride, pad in benchmark.resnet_convs(model)
  )
  assert listed == kernels


def test_forward_flops_per_patch():
  # The figures of the throughput issue: AlexNet 0.378 G, ResNet18 0.930 G, ResNet34 1.891 G.
  assert benchmark.forward_flops("alexnet") == 378_136_704
  assert benchmark.forward_flops("resnet18") == 930_359_296
  assert benchmark.forward_flops("resnet34") == 1_890_592_768
