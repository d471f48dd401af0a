"""Training configuration, for any task, network and recipe.

  mcalc-train --config=configs/default.py:task=2,model=resnet34 --workdir=runs/task2_resnet34
  mcalc-cv --config=configs/default.py:task=1,model=alexnet --workdir=runs/cv/task1_alexnet
  mcalc-cv --config=configs/paper.py:task=1,model=alexnet ...   # the paper's recipe

Arguments (after the colon): `task` (1: calcification vs background, 2: malignant vs benign),
`model` (a network of `mcalc_jax.model.networks.NETWORKS`; `tophat` is the classical floor) and
`recipe`:
  mcalc  (default) what the MIAS cross-validation supports (docs/ablation.md): patches of
         11.2 mm (`configs/data.py:source=...,field_of_view_mm=11.2`), no blur, intensities
         as stored (no per-patch z-score), a fixed top-hat/DoG front end before the CNN;
         SpeckNet and the floor at 0.2-mm pixels (56 px), SpeckNet with patience 10;
  paper  Pesapane et al. 2023: 112 native pixels, Gaussian blur of 1 pixel, per-patch z-score.
Both train with the paper's optimisation (cross-entropy, Adam, batch 16, lr 1e-4, early
stopping). Every field can then be overridden on the command line, e.g.
`--config.batch_size=64 --config.learning_rate=3e-4`; a misspelt field is an error (the config
is locked).
"""

import dataclasses

import ml_collections

from input_pipeline import sources
from mcalc_jax.configs import common
from mcalc_jax.model import networks, speck_detector
from mcalc_jax.whole_image import bilateral, clusters, marks, reranking, scoring, specks

RECIPES = ("mcalc", "paper")
FIELD_OF_VIEW_MM = 11.2  # the mcalc recipe's patch side (the paper's FFDM patches: 8-11 mm)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the training configuration for `arg` ('task=1,model=alexnet,recipe=mcalc')."""
  args = common.parse_arg(arg, task=1, model="alexnet", recipe="mcalc")
  if args.recipe not in RECIPES:
    raise ValueError(f"recipe {args.recipe!r} is not one of {RECIPES}")
  config = ml_collections.ConfigDict()
  config.recipe = args.recipe

  # Task 1: calcification patch (1) vs background (0). Task 2: malignant (1) vs benign (0).
  config.task = args.task
  config.model = args.model  # alexnet | resnet18 | resnet34 (mcalc_jax.model.networks)
  config.num_classes = 2
  # "" or "tophat": fixed speck detectors (white top-hats, DoG) as the CNN's first layer, on
  # intensities (use preprocess.normalization "unit"); mcalc_jax.model.networks.
  config.front_end = ""
  config.dtype = "float32"  # compute dtype; parameters stay float32. bfloat16 on accelerators.

  # Data: a TFDS patch dataset built by `mcalc-prepare`, or "noise" (generated noise patches for
  # smoke tests and benchmarks, input_pipeline.noise).
  config.dataset = "mcalc_patches/mias"  # name/builder_config of the TFDS builder
  config.data_dir = ""  # TFDS data_dir; empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.train_split = "train"
  config.eval_split = "validation"
  config.test_split = "test"
  config.shuffle_seed_offset = 1
  config.augment = True  # random flips and 90-degree rotations
  config.augment_rotation_deg = 0.0  # and a rotation by up to this many degrees
  config.augment_intensity = 0.0  # and contrast/brightness changes of up to this fraction
  config.input_backend = "grain"  # "grain" or "tfdata" (needs the tfdata extra)
  config.num_workers = 0  # grain worker processes (0: in-process)
  config.prefetch = 2
  config.patch_size = 112  # side of the stored patches in their pixels
  # Millimetres a patch covers: scoring tiles every image with that many millimetres at its own
  # pixel spacing. None: the dataset's (mcalc-prepare's); a number is checked against it;
  # input_pipeline.patches.NATIVE_PIXELS (0): native pixels, whatever their size (the paper's
  # protocol). The run's config.json records the dataset's.
  config.field_of_view_mm = ml_collections.config_dict.placeholder(float)

  # Preprocessing on the device, shared by training, evaluation and scoring.
  config.preprocess = ml_collections.ConfigDict()
  config.preprocess.blur_sigma = 1.0  # Gaussian blur in pixels; 0 disables it
  config.preprocess.normalization = "zscore"  # zscore (per patch) | unit ([0, 1] as stored)
  config.preprocess.input_size = 112  # resize to this size (e.g. 224 for torchvision inputs)

  # Optimisation (the paper: cross-entropy, Adam, batch 16, lr 1e-4, early stopping).
  config.batch_size = 16  # global batch over all devices and hosts
  config.eval_batch_size = 64
  config.learning_rate = 1e-4
  config.init_from = ""  # a run's workdir: start from its best checkpoint (fine-tuning)
  config.num_epochs = 30
  config.num_train_steps = -1  # -1: num_epochs * steps per epoch
  config.eval_every_steps = -1  # -1: once per epoch
  config.early_stopping_metric = "auc"  # validation metric watched for the best checkpoint
  config.early_stopping_patience = 5  # evaluations without improvement before stopping
  config.seed = 0

  # Cross-validation (`mcalc-cv`): everything that changes its result is here, recorded in its
  # WORKDIR/config.json (a rerun from that folder alone repeats it); its flags say only where and
  # how to run (workdir, folds and their seed, processes).
  config.cv = ml_collections.ConfigDict()
  config.cv.threshold_policy = "youden"  # chosen on the pooled validation parts
  config.cv.bootstrap_resamples = 1000  # patient bootstrap of every interval
  config.cv.calibrate = False  # Platt-scale each fold on its validation part before pooling
  config.cv.mining_rounds = 0  # rounds of hard-negative mining per fold (needs whole images)
  config.cv.mining_per_image = 4  # hard negatives mined from each training image per round
  # TFDS datasets (comma-separated) whose patches join every fold's training part, never its
  # validation or test: inserted or synthetic clusters. A patient of the cross-validated cohort
  # trains only in the folds that train on it.
  config.cv.train_also = ""
  # How they train: "mix" with the fold's real patches, or "pretrain": a run on them alone
  # (early-stopped on the fold's real validation part), then fine-tuned on the real patches.
  config.cv.train_also_as = "mix"

  # Whole images of a cross-validation: each fold scores its test patients' mammograms, out of
  # fold (FROC, image AUC, cluster ranks), then reranks and reads them against the other breast.
  config.whole_image = ml_collections.ConfigDict()
  config.whole_image.source = ""  # the data source whose images are scored (configs/data.py)
  config.whole_image.location = ""  # its folder or manifest; "": the source's shared folder
  # How tiles are laid and batched (mcalc_jax.whole_image.scoring.TileSettings, as mcalc-score).
  for field in dataclasses.fields(scoring.TileSettings):
    config.whole_image[field.name] = field.default
  config.whole_image.overlays = False  # an overlay PNG per scored image
  # The tile reranker refitted per fold (mcalc_jax.whole_image.reranking): "" none, "classical"
  # its tile features, "stacked" with the network's logit as one more; comma-separated features.
  config.whole_image.rerank = "classical"
  config.whole_image.rerank_features = ",".join(reranking.DEFAULT_FEATURES)
  config.whole_image.rerank_c = 1.0  # the tile reranker's inverse L2 strength
  # The saved rerankers' threshold (reranker.json's): their out-of-fold FROC's at this many false
  # positives per image (tools/ffdm_check flags tiles from it).
  config.whole_image.rerank_false_positives = 1.0
  # Inserted cohorts of digital (FFDM) backgrounds, comma-separated (input_pipeline.insertion):
  # WORKDIR/reranker_digital.json, the reranker for digital archives, fitted on them; "": none.
  config.whole_image.digital_cohort = ""
  # > 0: each evaluation once more with every image read against the other breast's
  # (mcalc_jax.whole_image.bilateral); 0: not.
  config.whole_image.bilateral_weight = bilateral.DEFAULT_WEIGHT

  # CAD marks of the whole images (mcalc_jax.experiments.marking): specks found by the classical
  # speck map, grouped into clusters, each a mark scored by a cluster classifier out of fold.
  config.marks = ml_collections.ConfigDict()
  config.marks.enabled = True  # with config.whole_image.source
  config.marks.speck_threshold = specks.SPECK_RULE.threshold  # top-hat over its local level
  for field in dataclasses.fields(clusters.ClusterRule):  # link_mm, min_specks, region_mm
    config.marks[field.name] = getattr(clusters.CLUSTER_RULE, field.name)
  config.marks.features = ",".join(marks.FEATURES)  # the cluster classifier's
  config.marks.hit_distance_mm = marks.HIT_DISTANCE_MM  # to a point annotation without a radius
  config.marks.false_marks_per_image = 0.5  # the operating point, chosen out of fold
  config.marks.classifier_c = 0.1  # the cluster classifier's inverse L2 strength (docs/results.md)
  # The tile grids the marks' tile features read: "reranked" (mcalc-score --reranker's) or
  # "network" (the network's own: score new images without --reranker then).
  config.marks.tiles = "reranked"
  # Inserted cohorts' folders, comma-separated (input_pipeline.insertion, clusters in the
  # cohorts' own images): specks from a detector trained per fold on its training patients'
  # inserted specks and on every image of a patient outside the CV (mcalc_jax.model.speck_detector)
  # instead of the classical map; its threshold a probability.
  config.marks.detector_cohort = ""
  config.marks.detector_threshold = 0.85
  config.marks.detector_steps = speck_detector.TrainOptions.steps  # Adam steps of 32 crops
  config.marks.detector_negatives = 4  # crops per image at random, as many on its brightest spots
  config.marks.detector_members = 1  # detectors averaged, each its own initialisation and batches
  # Share of the breast above the threshold, on validation images without calcifications, that
  # each detector's logits are shifted to give (speck_detector.logit_shift); 0: no shift.
  config.marks.detector_speck_fraction = 0.0
  # Crops around each annotated cluster of a fold's training patients, its brightest specks
  # labelled (input_pipeline.speck_labels.weakly_labelled), beside the cohorts'; 0: none.
  config.marks.detector_real_crops = 0

  config.log_every_steps = 50
  config.checkpoint_every_steps = -1  # -1: at every evaluation
  config.async_checkpointing = True
  config.evaluate_at_end = True  # mcalc-train ends with mcalc-evaluate on config.test_split

  # CPU speed (mcalc_jax.model.cpu_tuning): images per convolution call and per inference forward pass.
  # -1: chunks on one CPU device, the whole batch on accelerators or several devices; 0: whole
  # batch; N: chunks of N. Results are the same either way, up to float rounding.
  config.cpu_tuning = ml_collections.ConfigDict({"conv_chunk": -1, "inference_chunk": -1})

  # Multi-host: leave empty on one host. JAX_COORDINATOR_ADDRESS or a SLURM / Open MPI launch with
  # more than one process also configures a cluster (mcalc_jax.base.parallel.maybe_initialize_distributed).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.coordinator_address = ""  # host:port of process 0
  config.distributed.num_processes = 0  # 0: detected
  config.distributed.process_id = -1  # -1: detected

  if args.recipe == "mcalc":
    _mcalc_recipe(config, args.model)
  return config


# Per network, what the MIAS cross-validation measured for it (docs/ablation.md): the floor and
# SpeckNet see the film's own 0.2-mm pixels (its input size follows from the field of view); the
# floor, a logistic regression, learns at 1e-2; SpeckNet's validation AUC on 45-patch parts is
# noisy, so it waits 10 epochs.
_MCALC_NETWORK_SETTINGS = {
  "tophat": {"pixel_mm": 0.2, "learning_rate": 1e-2},
  "specknet": {"pixel_mm": 0.2, "early_stopping_patience": 10},
}


def _mcalc_recipe(config: ml_collections.ConfigDict, model: str) -> None:
  """Millimetres, intensities and speck detectors: what keeps 1-3-pixel specks visible."""
  config.dataset = f"mcalc_patches/{sources.dataset_name('mias', FIELD_OF_VIEW_MM)}"
  config.preprocess.blur_sigma = 0.0
  config.preprocess.normalization = "unit"
  if networks.get(model).cnn:
    config.front_end = "tophat"
  settings = dict(_MCALC_NETWORK_SETTINGS.get(model, {}))
  if "pixel_mm" in settings:
    config.preprocess.input_size = round(FIELD_OF_VIEW_MM / settings.pop("pixel_mm"))
  config.update(settings)
