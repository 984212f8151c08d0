"""What the health metrics (issue 17: each ReLU layer's firing fraction, in the
jitted step) cost: the paper-size train step at batch 32 with and without them,
alternating, CPU seconds per step.  taskset -c 1 python benchmarks/health_cost.py
"""
import functools, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax, jax.numpy as jnp, numpy as np
from configs import ilsvrc
from alexnet_jax import models, optimizer, steps
config = ilsvrc.get_config()
B = 32
def build(health):
  orig = models.sow_firing
  if not health:
    models.sow_firing = lambda m, l, x: x
  model = models.create_model(config.model)
  tx = optimizer.make_optimizer(optimizer.Hyper(**config.optimizer),
                                optimizer.Schedule(**config.schedule), 10000, 10000)
  state = jax.jit(functools.partial(steps.create_train_state, model=model, tx=tx))(jax.random.PRNGKey(0))
  fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, rng=jax.random.PRNGKey(1)),
               donate_argnums=0, compiler_options=steps.step_compiler_options())
  batch = {'image': jnp.asarray(np.random.RandomState(0).randn(B, 227, 227, 3), jnp.float32),
           'label': jnp.arange(B) % 1000}
  state, m = fn(state, batch); jax.block_until_ready(m)
  models.sow_firing = orig
  return fn, state, batch, sorted(k for k in m if k.startswith('firing'))
runs = {h: build(h) for h in (True, False)}
print({h: r[3] for h, r in runs.items()})
res = {True: [], False: []}
for rnd in range(3):
  for h in (True, False):
    fn, state, batch, _ = runs[h]
    t = time.process_time(); w = time.time()
    for _ in range(4):
      state, m = fn(state, batch)
    jax.block_until_ready(m)
    runs[h] = (fn, state, batch, None)
    res[h].append((time.process_time() - t) / 4)
    print(rnd, 'health' if h else 'no health', 'cpu s/step %.3f wall %.3f' % (res[h][-1], (time.time()-w)/4), flush=True)
print('median cpu s/step: health %.3f  none %.3f  ratio %.3f' % (np.median(res[True]), np.median(res[False]), np.median(res[True]) / np.median(res[False])))
