"""The retrain loop: a genotype's stand-alone network trained from scratch, then tested.

`retrain(config, workdir)` runs (or resumes) the DARTS evaluation recipe (quark0/darts
`train.py`): SGD with momentum, cosine learning rate per epoch, weight decay, gradient
clipping, auxiliary head loss, drop-path rising linearly per epoch, Cutout. Outputs in the
workdir: checkpoints/ (orbax), tb/ (TensorBoard events), genotype.json (the genotype
trained), result.json (final test accuracy).
"""
import functools
import json
import math
import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax import nnx
from tensorboardX import SummaryWriter

from dnas import bilevel, genotype as genotype_lib
from dnas.cells import eval_network, known_genotypes
from dnas.trainers import checkpoint, data

DEFAULT_SEARCH_CMD = 'dnas-search --config=configs/default.py --workdir=/tmp/dnas_default'


# ------------------------------------------------------------------------------------ config


def resolve_genotype(name_or_path: str) -> genotype_lib.Genotype:
  """config.genotype as a Genotype; a missing file says how to make one or what to use."""
  path = os.path.expanduser(str(name_or_path))
  if (os.sep in path or path.endswith('.json')) and not os.path.exists(path):
    raise genotype_lib.GenotypeError(
        f'genotype file {path} does not exist: run the search first ({DEFAULT_SEARCH_CMD}) '
        f'or pass a known genotype, e.g. --config.genotype=DARTS_V2 (known: '
        f'{", ".join(known_genotypes.names())})')
  return known_genotypes.resolve(name_or_path)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Rejects values the retraining cannot run with, naming the field and the fix."""
  spec = data.get_spec(config.dataset)
  data._tfds_split(spec, config.train_split)  # pylint: disable=protected-access
  data._tfds_split(spec, config.test_split)  # pylint: disable=protected-access
  if config.model.network != 'cifar':
    raise ValueError(f'config.model.network={config.model.network!r} cannot be retrained here; '
                     "valid: cifar (the ImageNet network is built and benchmarked only)")
  for field in ('batch_size', 'epochs', 'log_every_steps', 'checkpoint_every_steps'):
    if int(config[field]) <= 0:
      raise ValueError(f'config.{field} must be positive, got {config[field]}')
  if not 0.0 <= config.drop_path_prob < 1.0:
    raise ValueError(f'config.drop_path_prob must be in [0, 1), got {config.drop_path_prob}')
  if config.model.layers < 3:
    raise ValueError(f'config.model.layers must be >= 3 (two reduction cells and a normal '
                     f'one), got {config.model.layers}')


def experiment_identity(config, geno: genotype_lib.Genotype) -> dict:
  """The fields that make two runs the same experiment (a checkpoint of one fits the other).
  The genotype itself, not its path, so a changed genotype.json is not resumed into."""
  return {'dataset': config.dataset, 'train_split': config.train_split,
          'genotype': json.dumps(geno.to_json(), sort_keys=True),
          'model': config.model.to_dict(), 'seed': config.seed,
          'batch_size': config.batch_size}


# ------------------------------------------------------------------------------------- model


def build_model(config, geno, spec: data.DatasetSpec) -> eval_network.NetworkCIFAR:
  return eval_network.NetworkCIFAR(
      geno, num_classes=spec.num_classes, in_channels=spec.image_shape[-1],
      image_size=spec.image_shape[0], channels=config.model.channels,
      layers=config.model.layers, auxiliary=config.model.auxiliary,
      conv_form=config.model.conv_form, rngs=nnx.Rngs(config.seed))


@flax.struct.dataclass
class RetrainState:
  """Everything a train step reads and writes; a checkpoint is exactly this pytree."""
  step: jax.Array       # int32 scalar: completed steps
  params: Any           # nnx.State of nnx.Param
  batch_stats: Any      # nnx.State of nnx.BatchStat
  opt_state: Any        # optax state
  rng: jax.Array        # key data for drop-path


def init_state(model, tx, seed: int):
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = RetrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(seed + 1)))
  return graphdef, state


# -------------------------------------------------------------------------------------- step


def drop_path_schedule(base: float, epochs: int, steps_per_epoch: int):
  """The reference's `drop_path_prob * epoch / epochs`, set at the start of each epoch."""
  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, epochs)
    return base * epoch / epochs
  return schedule


def make_optimizer(o: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """DARTS' SGD (clip, L2 decay, momentum) with its hyperparameters in the optimizer state
  (optax.inject_hyperparams) rather than constants of the compiled step: the learning rate
  is fed each step, so a resumed run with more epochs, or another lr, reuses the compiled
  step from the persistent cache instead of recompiling it."""
  return optax.inject_hyperparams(bilevel.weight_optimizer)(
      learning_rate=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
      grad_clip=o.grad_clip)


def train_step(state: RetrainState, batch, lr, drop_prob, *, graphdef, tx, aux_weight: float):
  """One SGD step on cross-entropy + aux_weight x auxiliary cross-entropy, at learning rate
  `lr`, with drop-path probability `drop_prob` (both scalars from the host schedules)."""
  rng, key = jax.random.split(jax.random.wrap_key_data(state.rng))

  def loss_fn(params):
    model = nnx.merge(graphdef, params, state.batch_stats, copy=True)
    logits, logits_aux = model(batch['image'], train=True, key=key, drop_prob=drop_prob)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    total = loss
    if logits_aux is not None:
      total += aux_weight * optax.softmax_cross_entropy_with_integer_labels(
          logits_aux, batch['label']).mean()
    return total, (loss, logits, nnx.state(model, nnx.BatchStat))

  (total, (loss, logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  opt_state = state.opt_state._replace(
      hyperparams=dict(state.opt_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32)))
  updates, opt_state = tx.update(grads, opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state,
                            rng=jax.random.key_data(rng))
  metrics = {'loss': total, 'main_loss': loss, 'accuracy': bilevel.accuracy(logits, batch['label']),
             'grad_norm': optax.tree.norm(grads), 'drop_prob': drop_prob}
  return new_state, metrics


# -------------------------------------------------------------------------------------- eval


def make_eval_fn(graphdef):
  @jax.jit
  def eval_batch(state: RetrainState, batch, mask):
    model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
    logits, _ = model(batch['image'], train=False)
    return jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)
  return eval_batch


# -------------------------------------------------------------------------------------- loop


def retrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs or resumes a retraining; returns the summary also written to result.json."""
  check_config(config)
  geno = resolve_genotype(config.genotype)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.expanduser(config.data_dir)
  checkpoint.claim_workdir(workdir, experiment_identity(config, geno))
  genotype_lib.save(geno, os.path.join(workdir, 'genotype.json'))

  # ---- data
  spec = data.get_spec(config.dataset)
  train_ds = data.make_dataset(config.dataset, config.train_split, batch_size=config.batch_size,
                               seed=config.seed, train=True, data_dir=data_dir,
                               cutout_length=config.cutout_length)
  test_ds = data.make_dataset(config.dataset, config.test_split, batch_size=config.batch_size,
                              seed=None, train=False, data_dir=data_dir)
  steps_per_epoch = (config.steps_per_epoch or
                     data.num_examples(config.dataset, config.train_split, data_dir)
                     // config.batch_size)
  total_steps = config.epochs * steps_per_epoch

  # ---- model and state
  model = build_model(config, geno, spec)
  n_params = eval_network.num_params(model)
  lr = bilevel.cosine_per_epoch(config.optim.lr, config.optim.lr_min, config.epochs,
                                steps_per_epoch)
  drop_prob = drop_path_schedule(config.drop_path_prob, config.epochs, steps_per_epoch)
  tx = make_optimizer(config.optim)
  graphdef, state = init_state(model, tx, config.seed)
  del model
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 keep=config.keep_checkpoints)
  restored, restored_step = ckpt.restore_latest(state)
  if restored is not None:
    state = restored
    print(f'Resumed from the checkpoint at step {restored_step} in {ckpt.directory}', flush=True)
  start = int(state.step)
  print(f'dnas retrain: {config.dataset} ({config.train_split} -> {config.test_split}), '
        f'{config.model.layers} cells, C={config.model.channels}, {n_params:,} parameters '
        f'(without the auxiliary head); {total_steps} steps ({config.epochs} epochs x '
        f'{steps_per_epoch}); backend={jax.default_backend()}', flush=True)

  # ---- step
  step_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx,
                                      aux_weight=config.aux_weight), donate_argnums=0)
  eval_batch = make_eval_fn(graphdef)

  writer = SummaryWriter(os.path.join(workdir, 'tb'))
  test_accuracy = None
  last_saved = restored_step
  progress = tqdm.tqdm(total=total_steps, initial=start, desc='retrain', unit='step',
                       dynamic_ncols=True, mininterval=2.0)
  t_start = time.time()
  try:
    for step in range(start, total_steps):
      state, metrics = step_fn(state, train_ds[step], lr(step), drop_prob(step))
      done = step + 1
      metrics = {k: float(v) for k, v in metrics.items()}
      if not all(math.isfinite(v) for v in metrics.values()):
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        raise FloatingPointError(
            f'non-finite {bad} at step {done}; last good checkpoint: '
            f'{"step %d" % last_saved if last_saved is not None else "none"} in '
            f'{ckpt.directory}. Lower --config.optim.lr and rerun: the run resumes from that '
            f'checkpoint')
      progress.update(1)
      progress.set_postfix(loss=f'{metrics["loss"]:.3f}', acc=f'{metrics["accuracy"]:.3f}',
                           refresh=False)
      if done == start + 1:
        print(f'\nfirst step (compile included): {time.time() - t_start:.1f} s', flush=True)
      if done % config.log_every_steps == 0 or done == total_steps:
        for k, v in metrics.items():
          writer.add_scalar(f'train/{k}', v, done)
        writer.add_scalar('train/lr', float(lr(done - 1)), done)
      if done % steps_per_epoch == 0 or done == total_steps:
        epoch = done / steps_per_epoch
        if int(round(epoch)) % config.eval_every_epochs == 0 or done == total_steps:
          test_accuracy = data.evaluate(eval_batch, state, test_ds, config.batch_size)
          writer.add_scalar('test/accuracy', test_accuracy, done)
          progress.write(f'epoch {epoch:.0f}: test accuracy {test_accuracy:.4f}, '
                         f'train loss {metrics["main_loss"]:.4f}')
      if done % config.checkpoint_every_steps == 0 or done == total_steps:
        ckpt.save(done, state)
        last_saved = done
      writer.flush()
  finally:
    progress.close()
    writer.close()
    ckpt.close()

  if test_accuracy is None:  # resumed a finished run: evaluate once more for the summary
    test_accuracy = data.evaluate(eval_batch, state, test_ds, config.batch_size)
  result = {'test_accuracy': test_accuracy, 'steps': total_steps, 'epochs': config.epochs,
            'params': n_params, 'dataset': config.dataset, 'test_split': config.test_split,
            'genotype_arg': config.genotype, 'genotype': geno.to_json(),
            'wall_seconds_this_run': round(time.time() - t_start, 1)}
  with open(os.path.join(workdir, 'result.json.tmp'), 'w') as f:
    json.dump(result, f, indent=2)
  os.replace(os.path.join(workdir, 'result.json.tmp'), os.path.join(workdir, 'result.json'))
  print(f'test accuracy: {test_accuracy:.4f} ({config.test_split} split, '
        f'{result["wall_seconds_this_run"]:.0f} s)')
  return result
