r"""The paper's recipe: AlexNet on ILSVRC-2012 (tfds `imagenet2012`).

Command (one host, all local accelerators):

  python -m alexnet_jax.main --config=configs/ilsvrc.py --workdir=$WORKDIR \
      --config.dataset.data_dir=$TFDS_DATA_DIR

Data: tfds `imagenet2012` needs a manual download. Put ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar in $MANUAL_DIR and run `python -m alexnet_jax.prepare
--config=configs/ilsvrc.py --tfds_build --config.dataset.data_dir=$TFDS_DATA_DIR
--config.dataset.manual_dir=$MANUAL_DIR` (or just start the job: it prints these
steps if the dataset is missing). Optionally write the 256x256 images once with
`... --output_dir=$PREPARED` and train with --config.dataset.prepared_dir=$PREPARED.

Hardware and time: the paper trained ~90 epochs in 5-6 days on two GTX 580
3GB GPUs. Ours has not yet been run to completion on ImageNet; see
benchmarks/README.md for measured step rates.

Target (paper, ILSVRC-2012 val, one CNN): 40.7% top-1 / 18.2% top-5 error
(the softmax averaged over ten patches, section 4.1; results in section 6,
Table 2). The paper reports no single-crop error.

The network's values are models.AlexNet's field defaults (each cites its section); config.model
sets only name, classes and crop size, the other fields are typed placeholders (None = the model's).

Every number below cites the paper section it comes from. Eight defaults
depart from the paper's letter: the initial biases, weight decay on kernels
only, LRN windows per tower, 227 crops (1,800 training patches per image, not
2048), the plateau's rule and the error it follows (eval.select_on), published
statistics for tfds read on the fly, training patches from rounded windows
when not prepared, and inverted dropout. The README's table "Where the
defaults depart from the paper" gives each with the paper's words, the reason
and the switch back. The largest:

Initial biases 0.1, not the paper's 1 (section 5), in conv2, conv4, conv5, fc6
and fc7 (models.AlexNet.bias_init; the paper's letter: --config.model.bias_init=1.0).
Caffe's bvlc_alexnet reproduction made the same change, "found necessary for
training, as initialization to 1 gave flat loss" (models/bvlc_alexnet/readme.md).
Measured here (2026-12-03, CPU, `python benchmarks/init_stability.py`, table and
figure in docs/init_stability.md; not on ImageNet): on a 10-class proxy of
upscaled 8x8 digits at the paper's batch 128 and eps 0.01 (and on 16 real
ImageNet JPEGs at batch 16), biases 1 spike the loss to ~12 in the first 10
steps, then fc7's firing fraction falls to 0.00 (by step ~60 on the proxy) and
the loss stays at chance (ln 10 = 2.303 on the digits proxy; ln 16 on the 16
JPEGs), as it does with a 20-step eps warmup;
biases 0.1 keep fc7 alive (>= 0.99 of its units fire) and leave chance by step
26 (mean loss 1.26 over steps 51-60 on the proxy). This config itself, run
by the training command on the proxy for 60 steps (docs/init_stability.md):
loss 1.256 over steps 51-60, fc7 firing 0.997, 27.5% top-1 error on the 360
held-out digits. The weight std stays the paper's 0.01 (config.model.init_std;
Caffe's 0.005 in fc6/fc7 also trains).
"""

import ml_collections

# models.AlexNet's fields that the recipe leaves to the model, with their types:
# placeholders (None, the model's own default) so that --config.model.KEY=VALUE
# can set them (config flags are locked). tests/test_config_checks.py checks
# this list against the model's fields.
MODEL_FIELDS = (
    ('towers', int), ('conv_features', tuple), ('fc_features', int),
    ('conv1_padding', int), ('lrn', bool), ('lrn_depth_radius', int),
    ('lrn_bias', float), ('lrn_alpha', float), ('lrn_beta', float),
    ('lrn_per_tower', bool), ('lrn_impl', str), ('pool_window', int),
    ('pool_stride', int), ('pool_impl', str), ('activation', str),
    ('dropout_rate', float), ('dropout_scaling', str), ('remove_conv', int), ('kernel_init', str),
    ('init_std', tuple), ('bias_init', float), ('grouped_conv_impl', str),
    ('dtype', str), ('param_dtype', str))


def get_config(arg=None):
  """Returns the paper's config. `arg='runlocal'` shrinks it for a smoke run."""
  if arg not in (None, '', 'runlocal'):
    raise ValueError(f'configs/ilsvrc.py takes no argument {arg!r}; its one argument is '
                     "'runlocal' (configs/ilsvrc.py:runlocal, a smoke run).")
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---------------------------------------------------------------- data
  config.dataset = ml_collections.ConfigDict()
  # 'auto': 'prepared' if prepared_dir is set, else 'folder' if folder is set,
  # else 'tfds' | 'tfds' | 'folder' | 'digits' | 'prepared' (alexnet_jax/data_sources.py)
  config.dataset.source = 'auto'
  config.dataset.name = 'imagenet2012'   # tfds builder name (source='tfds')
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)    # tfds data_dir
  config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # ILSVRC tars
  config.dataset.folder = ml_collections.config_dict.placeholder(str)  # source='folder': root/{train,val}/CLASS/*.jpg
  # The paper's 256x256 images written once by `python -m alexnet_jax.prepare
  # --config=... --output_dir=DIR` (section 2: "down-sampled ... to 256 x 256");
  # setting it reads them (source 'auto' or 'prepared') instead of the originals.
  config.dataset.prepared_dir = ml_collections.config_dict.placeholder(str)
  config.dataset.download = False        # imagenet2012 needs a manual download (see above)
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'validation'
  config.dataset.image_key = 'image'
  config.dataset.label_key = 'label'
  config.dataset.shuffle_buffer = 16_384
  config.dataset.cache = False
  config.dataset.prefetch = 2            # batches prefetched to device
  config.dataset.threads = 0             # tf.data threads; 0 = one per CPU core

  # ------- preprocessing (section 2: 256x256 down-sampling, mean subtraction;
  # section 4.1: crops, reflections, PCA lighting)
  config.input = ml_collections.ConfigDict()
  config.input.resize_size = 256         # rescale the shorter side to 256 ...
  config.input.central_crop = True       # ... and take the central 256x256 crop
  # Crops are config.model.input_size (227, or 224 with conv1 padding 2).
  config.input.random_crop = True        # random crops of the 256x256 image
  config.input.flip = True               # and their horizontal reflections
  config.input.pca_lighting = 0.1        # std of alpha_i in PCA colour augmentation; 0 = off
  config.input.random_resized_crop = False  # modern (Inception) crops instead; not the paper's
  config.input.rrc_area = (0.08, 1.0)    # ... their area fraction (Szegedy et al. 2015)
  config.input.rrc_aspect = (3 / 4, 4 / 3)  # ... and aspect ratio range
  # The paper does not say how it rescales. False: bilinear sampling (OpenCV's
  # INTER_LINEAR, as Caffe's bvlc_alexnet data); True: antialiased bilinear
  # (PIL, torchvision), ~2x slower on CPU (benchmarks/input_pipeline.py).
  config.input.antialias = False
  # Training patches from a window rounded to whole source pixels (< 0.5 px off
  # the exact grid, ~2x cheaper); False: exact like evaluation (preprocessing.py).
  config.input.fast_train_resample = True
  config.input.mean = 'image'            # subtract the training mean 'image' | 'channel' | 'none'
  # Network input = (pixel - mean) * pixel_scale, pixels in 0..255. The paper
  # (and Caffe) feed raw mean-subtracted 0..255 values: scale 1.
  config.input.pixel_scale = 1.0
  config.input.stats_path = ml_collections.config_dict.placeholder(str)  # overrides; None = the training split's (alexnet_jax/stats.py: for_dataset)
  # Published ImageNet statistics, NOT from the paper: the fallback of tfds read
  # on the fly only. Per-channel RGB mean of 0..255 pixels (Caffe/VGG), and the PCA
  # (fb.resnet.torch): eigenvalues (variances) of the covariance of RGB pixels
  # scaled to [0, 1], pooled over all pixels of all images -- the convention
  # `python -m alexnet_jax.stats` computes (the project's 258 ImageNet sample
  # JPEGs give 0.2040, 0.0167, 0.0038 at 256) -- and eigenvectors as columns. PCA
  # noise on 0..255 pixels is 255 * P (alpha * lambda) (alexnet_jax/augment.py).
  config.input.published_mean_rgb = (123.68, 116.78, 103.94)
  config.input.published_pca_eigval = (0.2175, 0.0188, 0.0045)
  config.input.published_pca_eigvec = ((-0.5675, 0.7192, 0.4009),
                                       (-0.5808, -0.0045, -0.8140),
                                       (-0.5836, -0.6948, 0.4203))

  # --------------------------------------------- model (section 3, figure 2)
  # models.AlexNet's fields are the paper's network (each cites its section;
  # bias_init, lrn_per_tower, dropout_scaling: the README's table): the recipe names it, the data's classes and the
  # crop size the input pipeline cuts; MODEL_FIELDS are left to the model.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'alexnet'          # section 3; 'alexnet_tiny', 'torchvision', 'figure1'
  config.model.num_classes = 1000        # section 2: ILSVRC's 1000 categories
  config.model.input_size = 227          # crop size; 224 gives conv1 padding 2 (torchvision geometry)
  # Training patches per 256x256 image (section 4.1): (256 - 227 + 1)^2 offsets
  # x 2 reflections = 30 x 30 x 2 = 1,800 at 227; 33 x 33 x 2 = 2,178 at 224.
  # The paper's "factor of 2048" is (256 - 224)^2 x 2, which leaves out the +1.
  for key, kind in MODEL_FIELDS:
    config.model[key] = ml_collections.config_dict.placeholder(kind)

  # ------------------------------------------------- training (section 5)
  config.batch_size = 128                # global batch
  config.num_epochs = 90.0               # "roughly 90 cycles"
  config.num_train_steps = -1            # > 0 overrides num_epochs
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.01  # eps, "initialized at 0.01"
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  # Section 5's rule is written for weights w; cuda-convnet, which the paper ran,
  # has weight decay (`wc`) on weights only (example-layers/layer-params-*.cfg:
  # epsW, epsB, momW, momB, wc), as Caffe's bvlc_alexnet (biases decay_mult 0).
  config.optimizer.weight_decay_on = 'kernels'   # 'all': biases too
  config.optimizer.rule = 'paper'        # v <- m v - wd eps w - eps g | 'trace_then_scale' (optax.sgd)

  config.schedule = ml_collections.ConfigDict()
  # 'plateau': divide by 10 when the validation error stops improving (section 5's
  # heuristic; the paper states no patience or threshold: ours are below);
  # 'step': divide by `factor` at `step_epochs`; 'cosine': warmup + cosine; 'constant'.
  config.schedule.name = 'plateau'
  config.schedule.factor = 0.1
  config.schedule.patience = 4           # evaluations without improvement before a drop (our choice)
  config.schedule.min_delta = 1e-3       # improvement in top-1 error that resets patience (our choice)
  # (the error it watches: config.eval.select_on)
  config.schedule.max_drops = 3          # "reduced three times prior to termination"
  config.schedule.step_epochs = (30, 60, 80)
  config.schedule.warmup_epochs = 0.0

  # ------------------- evaluation (section 4.1: ten patches; results: section 6)
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256
  config.eval.every_epochs = 1.0
  config.eval.ten_crop = True            # also the paper's 10-crop softmax average
  # The validation metric that divides eps on a plateau (section 5: "the
  # validation error rate", which the paper does not pin to a test procedure)
  # and picks best/: the centre crop's top-1 error (our choice: computed in
  # every config, also with ten_crop=False) | 'eval_multicrop_top1_error' (the
  # ten patches of section 4.1; needs ten_crop=True).
  config.eval.select_on = 'eval_top1_error'

  # ------------------------------------------- logging and checkpoints
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3            # plus the best by config.eval.select_on
  config.async_checkpoints = True

  # ------------------------------------------ training health (issue 17)
  # Each ReLU layer's fraction of firing units (a unit fires if it is > 0 for
  # some example of the batch) is logged at every log step (train_firing_conv1
  # ... train_firing_fc7). A layer below `min_firing` on every step of a whole
  # logging window is dead: the run stops (exit 1) naming it, and its
  # checkpoints are put aside. Measured (docs/init_stability.md): the paper's
  # biases 1 leave fc7 at 0.3-1% from step ~37 (a unit or two per batch, from
  # augmentation, while the loss sits at chance); runs that learn keep every
  # layer above 25%.
  config.health = ml_collections.ConfigDict()
  config.health.stop_on_dead_layer = True  # False: log the warning and go on
  config.health.min_firing = 0.01          # 0: only a layer with no unit firing at all

  # ------------------------------------------------------- parallelism
  config.mesh = (-1, 1)                  # (data, model); model=2 puts one tower per device

  # --------------------------------------------------- a stuck run (watchdog)
  # No training step and no evaluation batch for this long: every thread's
  # stack goes to WORKDIR/errors.log and the run stops with exit status 75 (the
  # launch scripts restart it; alexnet_jax/preemption.py). Otherwise a stopped
  # or hung process (a read, a collective) holds the whole allocation. Progress
  # is a step or an evaluation batch, so a long evaluation that moves never
  # trips it. The longest healthy gaps come once per (re)start or evaluation.
  # Measured (2026-12-07, docs/faults.md "The watchdog's margin": this recipe
  # on 2 CPU cores at load ~13, batch 8, 57M parameters): fresh start to the
  # first step 50 s (init, first compile, first step), restore of the ~0.45 GB
  # state 7 s and to the first step 28 s, a checkpoint save plus the first
  # compile of the evaluation step 16 s. Scaled to the recipe (batch 128, the
  # 16,384-image shuffle buffer): ~110 s, adding 3 s for a first step of 128
  # (benchmarks/README.md) and 55 s to fill the buffer at ~300 decoded images
  # per CPU-second. 10 min is ~5x that, ~2.5x with a GPU's first compile (1-2
  # min) and a restore from a bucket (~1 min; neither measured here) added.
  # 0 turns the watchdog off.
  config.watchdog_minutes = 10.0

  # ----------------------------------------------------------- fine-tuning
  # Start a new run from another run's parameters: a workdir (its latest
  # checkpoint), its best/ directory or a checkpoint step directory, e.g. one
  # written by alexnet_jax.convert. Layers named in init_reinit keep their
  # fresh initialization (fc8 for a new class count). A workdir that has its own
  # checkpoint resumes from it instead.
  config.init_from = ml_collections.config_dict.placeholder(str)
  config.init_reinit = ()

  if arg == 'runlocal':
    config.batch_size = 8
    config.eval.batch_size = 8
    config.num_train_steps = 4
    config.dataset.shuffle_buffer = 64
    config.log_every_steps = 1
  return config
