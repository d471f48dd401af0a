"""Default hyper-parameters: the paper's values (Pesapane et al. 2023).

Every experiment config imports this file and overrides fields; every field can be overridden on
the command line, e.g. `--config.model=resnet34 --config.batch_size=64`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default training configuration."""
  config = ml_collections.ConfigDict()

  # Task 1: calcification patch (1) vs background (0). Task 2: malignant (1) vs benign (0).
  config.task = 1
  config.model = "alexnet"  # alexnet | resnet18 | resnet34
  config.num_classes = 2
  config.dtype = "float32"  # compute dtype; parameters stay float32. bfloat16 on accelerators.

  # Data: a TFDS patch dataset built by `mcalc-prepare`, or "synthetic" (generated patches for
  # smoke tests and benchmarks, mcalc_jax.train.SyntheticPatchData).
  config.dataset = "mcalc_patches/mias"  # name/builder_config of the TFDS builder
  config.data_dir = ""  # TFDS data_dir; empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.train_split = "train"
  config.eval_split = "validation"
  config.test_split = "test"
  config.shuffle_seed_offset = 1
  config.augment = True  # random flips and 90-degree rotations
  config.input_backend = "grain"  # "grain" or "tfdata" (needs the tfdata extra)
  config.num_workers = 0  # grain worker processes (0: in-process)
  config.prefetch = 2
  config.patch_size = 112  # side of the stored patches in native pixels; scoring tiles with it

  # Preprocessing on the device, shared by training, evaluation and scoring.
  config.preprocess = ml_collections.ConfigDict()
  config.preprocess.blur_sigma = 1.0  # Gaussian blur in pixels; 0 disables it
  config.preprocess.normalization = "zscore"  # zscore (per patch) | unit ([0, 1] as stored)
  config.preprocess.input_size = 112  # resize to this size (e.g. 224 for torchvision inputs)

  # Optimisation (the paper: cross-entropy, Adam, batch 16, lr 1e-4, early stopping).
  config.batch_size = 16  # global batch over all devices and hosts
  config.eval_batch_size = 64
  # Images per forward pass in inference: -1 per network on a CPU (cache-sized chunks), whole
  # batch on accelerators; 0 whole batch; N chunks of N. See checkpointing.inference_micro_batch.
  config.inference_micro_batch = -1
  # Images per convolution call: -1 chunks of 8 on one CPU device (for the caches), the whole
  # batch on accelerators or several devices; 0 whole batch; N chunks of N. See
  # models.conv_batch_chunk.
  config.conv_batch_chunk = -1
  config.learning_rate = 1e-4
  config.num_epochs = 30
  config.num_train_steps = -1  # -1: num_epochs * steps per epoch
  config.eval_every_steps = -1  # -1: once per epoch
  config.early_stopping_metric = "auc"  # validation metric watched for the best checkpoint
  config.early_stopping_patience = 5  # evaluations without improvement before stopping
  config.seed = 0

  config.log_every_steps = 50
  config.checkpoint_every_steps = -1  # -1: at every evaluation
  config.async_checkpointing = True
  config.evaluate_at_end = True  # mcalc-train ends with mcalc-evaluate on config.test_split

  # Multi-host: leave empty on one host. JAX_COORDINATOR_ADDRESS or a SLURM / Open MPI launch with
  # more than one process also configures a cluster (mcalc_jax.parallel.maybe_initialize_distributed).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""  # host:port of process 0
  config.distributed.num_processes = 0  # 0: detected
  config.distributed.process_id = -1  # -1: detected

  return config
