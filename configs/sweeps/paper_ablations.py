r"""The paper's ablations (sections 3.1-3.4, 4.1, 4.2, 6, 7) as override sets.

Dry run (prints the commands; see launch/README.md for the engines):

  python -m alexnet_jax.sweep --sweep=configs/sweeps/paper_ablations.py \
      --workdir_root=/ckpt/ablations --dry_run

Then the table beside the paper's numbers:

  python -m alexnet_jax.report /ckpt/ablations

Each run is a full ILSVRC-2012 training (configs/ilsvrc.py); the paper needed
5-6 days per run on two GTX 580s. `--base_config=configs/digits.py` runs the
same sweep on the no-download digits set in minutes per run (there PCA
lighting is already off, so `no_pca_lighting` repeats the baseline).
"""

BASE = 'configs/ilsvrc.py'


def get_sweep():
  return [
      {'name': 'baseline'},
      {'name': 'no_lrn', 'model.lrn': False},                       # §3.3
      {'name': 'no_overlap_pool',                                   # §3.4: s = z = 2
       'model.pool_window': 2, 'model.pool_stride': 2},
      {'name': 'no_pca_lighting', 'input.pca_lighting': 0.0},       # §4.1
      {'name': 'no_dropout', 'model.dropout_rate': 0.0},            # §4.2
      {'name': 'one_tower', 'model.towers': 1},                     # §3.2
      {'name': 'tanh', 'model.activation': 'tanh'},                 # §3.1
      {'name': 'no_conv4', 'model.remove_conv': 4},                 # §7; 3 or 5 also
      {'name': 'single_crop', 'eval.ten_crop': False},              # §4.1 (ten patches)
  ]


# What the paper reports for each entry: the change in ILSVRC error, in
# percentage points, when the ablation is applied (None: no number given);
# for the baseline, the error itself. `python -m alexnet_jax.report` prints
# these beside the measured changes.
PAPER = {
    'baseline': dict(
        top1=40.7, top5=18.2,
        note='paper: 40.7 / 18.2 % error, ILSVRC-2012 val, 1 CNN, 10 crops '
             '(§6, table 2)'),
    'no_lrn': dict(
        top1=1.4, top5=1.2,
        note='§3.3: "response normalization reduces our top-1 and top-5 '
             'error rates by 1.4% and 1.2%"'),
    'no_overlap_pool': dict(
        top1=0.4, top5=0.3,
        note='§3.4: overlapping pooling (s=2, z=3) vs s=z=2 "reduces the '
             'top-1 and top-5 error rates by 0.4% and 0.3%"'),
    'no_pca_lighting': dict(
        top1=1.0, top5=None,
        note='§4.1: PCA colour augmentation "reduces the top-1 error rate by '
             'over 1%"; no top-5 number'),
    'no_dropout': dict(
        top1=None, top5=None,
        note='§4.2: "without dropout, our network exhibits substantial '
             'overfitting"; no number'),
    'one_tower': dict(
        top1=None, top5=None,
        note='§3.2 compares with a one-GPU net with half the kernels in each '
             'conv layer (1.7 / 1.2 % worse); towers=1 here is the '
             'full-width ungrouped net, which the paper does not report'),
    'tanh': dict(
        top1=None, top5=None,
        note='§3.1, figure 1: ReLU reaches 25% training error 6x faster than '
             'tanh (4-layer CNN, CIFAR-10); no ImageNet number'),
    'no_conv4': dict(
        top1=2.0, top5=None, approx=True,
        note='§7: removing any middle conv layer costs "about 2%" top-1'),
    'single_crop': dict(
        top1=None, top5=None,
        note='§4.1 tests on 10 patches; the paper gives no single-crop number; '
             'this row compares single crop with the baseline\'s 10 crops'),
}
