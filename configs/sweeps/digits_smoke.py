r"""Three tiny runs on the no-download digits set: baseline, no LRN, s = z = 2.

A smoke test of the whole sweep -> report path (2 CPU cores: ~1 min a run):

  python -m alexnet_jax.sweep --sweep=configs/sweeps/digits_smoke.py \
      --workdir_root=/tmp/digits_smoke --engine=local
  python -m alexnet_jax.report /tmp/digits_smoke

The entries are the paper_ablations ones of the same names, so the report
shows the paper's numbers beside them. Ten epochs (a third of digits.py's) and
one seed are too little for the differences to mean much: this tests the
plumbing, not the paper.
"""

BASE = 'configs/digits.py'
COMMON = {'num_epochs': 10.0, 'eval.every_epochs': 10.0}


def get_sweep():
  return [
      {'name': 'baseline'},
      {'name': 'no_lrn', 'model.lrn': False},
      {'name': 'no_overlap_pool',
       'model.pool_window': 2, 'model.pool_stride': 2},
  ]
