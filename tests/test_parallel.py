"""Data parallelism: mesh, global batches, padding, distributed start-up, and 8-device equality.

The 8-device check runs this file as a script in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8, so the rest of the suite keeps one device.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mcalc_jax.base import parallel
from mcalc_jax.configs import default

# Tolerances of the 8-device vs 1-device comparison after one Adam step (lr 1e-4). Loss and
# BatchNorm statistics differ only in the order of float32 reductions. Adam's first update is
# lr * g / (|g| + eps), about lr * sign(g), so a gradient within rounding of zero may flip its
# step: all parameters must agree within 2 * lr, and all but 1e-4 of them within 1e-6.
LOSS_AND_STATS_ATOL = 1e-5
PARAMS_ATOL = 1e-6
PARAMS_MAX_FRACTION_OUTSIDE_ATOL = 1e-4
PARAMS_BOUND = 2e-4


def test_mesh_has_one_data_axis_over_all_devices():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()


def test_global_batch_keeps_numeric_fields_sharded_and_drops_ids():
  mesh = parallel.make_mesh()
  local = {
    "image": np.zeros((4, 8, 8, 1), np.float32),
    "label": np.arange(4, dtype=np.int32),
    "mask": np.ones(4, bool),
    "patch_id": np.array(list("abcd"), object),
  }
  batch = parallel.global_batch(local, mesh)
  assert sorted(batch) == ["image", "label", "mask"]
  assert batch["image"].sharding == parallel.batch_sharded(mesh)
  np.testing.assert_array_equal(batch["label"], local["label"])


def test_pad_to_multiple_masks_the_padding():
  padded, mask = parallel.pad_to_multiple(np.ones((5, 2)), 4)
  assert padded.shape == (8, 2) and padded[5:].sum() == 0
  np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)
  assert parallel.pad_to_multiple(np.ones((8, 2)), 4)[0].shape == (8, 2)


@pytest.fixture
def no_cluster(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  return calls


def test_distributed_start_is_a_no_op_on_one_host(no_cluster):
  assert parallel.maybe_initialize_distributed() is False
  assert no_cluster == []


def test_distributed_start_when_a_launcher_reports_several_processes(no_cluster, monkeypatch):
  monkeypatch.setenv("SLURM_NTASKS", "4")
  assert parallel.maybe_initialize_distributed() is True
  assert no_cluster == [{"coordinator_address": None, "num_processes": None, "process_id": None}]


def test_distributed_start_with_an_explicit_coordinator(no_cluster):
  parallel.maybe_initialize_distributed("10.0.0.1:1234", num_processes=2, process_id=1)
  assert no_cluster == [
    {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
  ]


def test_a_coordinator_without_count_and_id_is_a_one_line_error(no_cluster, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  with pytest.raises(parallel.LaunchError, match="without --num_processes or --process_id"):
    parallel.maybe_initialize_distributed()
  with pytest.raises(parallel.LaunchError, match="without --process_id"):
    parallel.maybe_initialize_distributed(num_processes=2)
  assert no_cluster == []


def test_gather_batches_on_one_process_concatenates_them():
  parts = [np.array(["a", "b"], object), np.array(["c"], object)]
  np.testing.assert_array_equal(parallel.gather_batches(parts), ["a", "b", "c"])


def test_eight_device_step_equals_one_device_step():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs["devices"] == 8
  assert diffs["loss"] <= LOSS_AND_STATS_ATOL, diffs
  assert diffs["batch_stats"] <= LOSS_AND_STATS_ATOL, diffs
  assert diffs["params_fraction_outside_atol"] <= PARAMS_MAX_FRACTION_OUTSIDE_ATOL, diffs
  assert diffs["params_max"] <= PARAMS_BOUND, diffs


def _one_step(mesh, batch):
  """ResNet18 (BatchNorm makes the global-batch statistics matter) at 32x32, one train step."""
  from mcalc_jax.model import train  # noqa: PLC0415

  config = default.get_config()
  config.model, config.patch_size, config.preprocess.input_size = "resnet18", 32, 32
  graphdef, tx, state = train.create_train_state(config, mesh)
  step = train.make_train_step(config, graphdef, tx, mesh)
  state, metrics = step(state, parallel.global_batch(batch, mesh))
  return jax.device_get((state.params, state.batch_stats, metrics["loss"]))


def _abs_diffs(a, b) -> np.ndarray:
  return np.concatenate(
    [np.abs(x - y).ravel() for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
  )


if __name__ == "__main__":
  jax.config.update("jax_disable_most_optimizations", True)  # same programs, faster compiles
  rng = np.random.default_rng(0)
  batch = {  # 16 examples: 2 per device, so per-device BatchNorm statistics would differ a lot
    "image": rng.uniform(0, 1, (16, 32, 32, 1)).astype(np.float32),
    "label": rng.integers(0, 2, 16).astype(np.int32),
  }
  single = _one_step(parallel.make_mesh(jax.devices()[:1]), batch)
  sharded = _one_step(parallel.make_mesh(), batch)
  params = _abs_diffs(single[0], sharded[0])
  print(
    json.dumps(
      {
        "devices": jax.device_count(),
        "params_max": float(params.max()),
        "params_fraction_outside_atol": float((params > PARAMS_ATOL).mean()),
        "batch_stats": float(_abs_diffs(single[1], sharded[1]).max()),
        "loss": abs(float(single[2]) - float(sharded[2])),
      }
    )
  )
