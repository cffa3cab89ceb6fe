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

from dnas import bilevel, genotype as genotype_lib, nb201_string
from dnas.cells import known_genotypes, standalone
from dnas.trainers import checkpoint, data, host_memory, sharding

DEFAULT_SEARCH_CMD = 'dnas-search --config=configs/default.py --workdir=/tmp/dnas_default'
NB201_SEARCH_CMD = 'dnas-search --config=configs/nb201_default.py --workdir=/tmp/dnas_nb201'


# ------------------------------------------------------------------------------------ config


def resolve_genotype(name_or_path: str, network: str = 'cifar') -> standalone.Arch:
  """config.genotype (a DARTS name or genotype.json, an NB201 arch string or genotype.json)
  as an Arch; a missing file says how to make one or what to use."""
  path = os.path.expanduser(str(name_or_path))
  if (os.sep in path or path.endswith('.json')) and not os.path.exists(path):
    if network == 'nb201':
      raise genotype_lib.GenotypeError(
          f'genotype file {path} does not exist: run the search first ({NB201_SEARCH_CMD}) '
          f'or pass an arch string, e.g. --config.genotype=\'{nb201_string.EXAMPLE}\'')
    raise genotype_lib.GenotypeError(
        f'genotype file {path} does not exist: run the search first ({DEFAULT_SEARCH_CMD}) '
        f'or pass a known genotype, e.g. --config.genotype=DARTS_V2 (known: '
        f'{", ".join(known_genotypes.names())})')
  return standalone.resolve(name_or_path)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Rejects values the retraining cannot run with, naming the field and the fix."""
  spec = data.get_spec(config.dataset)
  data._tfds_split(spec, config.train_split)  # pylint: disable=protected-access
  data._tfds_split(spec, config.test_split)  # pylint: disable=protected-access
  if config.model.network not in ('cifar', 'nb201'):
    raise ValueError(f'config.model.network={config.model.network!r} cannot be retrained here; '
                     "valid: cifar (DARTS genotypes; the ImageNet network is built and "
                     "benchmarked only), nb201 (NAS-Bench-201 arch strings)")
  for field in ('batch_size', 'epochs', 'log_every_steps', 'checkpoint_every_steps'):
    if int(config[field]) <= 0:
      raise ValueError(f'config.{field} must be positive, got {config[field]}')
  if not 0.0 <= config.drop_path_prob < 1.0:
    raise ValueError(f'config.drop_path_prob must be in [0, 1), got {config.drop_path_prob}')
  if config.model.network == 'nb201':
    if config.model.get('cells_per_stage', 0) <= 0 or config.model.channels <= 0:
      raise ValueError('config.model.cells_per_stage and config.model.channels must be '
                       'positive for an nb201 network: start from configs/retrain_nb201_default.py')
    if config.drop_path_prob:
      raise ValueError(f'config.drop_path_prob={config.drop_path_prob}: NB201 networks have no '
                       'drop-path (NAS-Bench-201 trains without it); set it to 0')
  elif config.model.get('layers', 0) < 3:
    raise ValueError(f'config.model.layers must be >= 3 (two reduction cells and a normal '
                     f'one), got {config.model.get("layers")}')


def experiment_identity(config, geno: standalone.Arch) -> dict:
  """The fields that make two runs the same experiment (a checkpoint of one fits the other).
  The genotype itself, not its path, so a changed genotype.json is not resumed into."""
  return {'dataset': config.dataset, 'train_split': config.train_split,
          'genotype': json.dumps(geno.to_json(), sort_keys=True),
          'model': config.model.to_dict(), 'seed': config.seed,
          'batch_size': config.batch_size}


# ------------------------------------------------------------------------------------- model


def build_model(config, geno: standalone.Arch, spec: data.DatasetSpec) -> nnx.Module:
  """The DARTS CIFAR network or an NB201 network; both return (logits, aux_logits | None)."""
  m = config.model
  return standalone.build(
      geno, m.network, num_classes=spec.num_classes, in_channels=spec.image_shape[-1],
      image_size=spec.image_shape[0], channels=m.channels, layers=m.get('layers'),
      cells_per_stage=m.get('cells_per_stage'), auxiliary=m.get('auxiliary', False),
      conv_form=m.get('conv_form', 'auto'), seed=config.seed)


def describe_model(config) -> str:
  m = config.model
  if m.network == 'nb201':
    return f'NB201 network (3 x {m.cells_per_stage} cells, C={m.channels})'
  return f'{m.layers} cells, C={m.channels}'


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
  step from the persistent cache instead of recompiling it. `o.nesterov` (NAS-Bench-201's
  recipe) switches to Nesterov momentum; grad_clip=0 means no clipping."""
  if o.get('nesterov', False) or not o.grad_clip:
    return optax.inject_hyperparams(_sgd, static_args=('grad_clip', 'nesterov'))(
        learning_rate=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
        grad_clip=float(o.grad_clip), nesterov=bool(o.get('nesterov', False)))
  return optax.inject_hyperparams(bilevel.weight_optimizer)(
      learning_rate=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
      grad_clip=o.grad_clip)


def _sgd(*, learning_rate, momentum, weight_decay, grad_clip, nesterov):
  """torch.optim.SGD(momentum, weight_decay, nesterov) after optional global-norm clipping."""
  return optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity(),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov))


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


def make_eval_fn(graphdef, dp: sharding.DataParallel | None = None):
  shardings = ({} if dp is None else
               dict(in_shardings=(dp.replicated, dp.batch, dp.batch), out_shardings=dp.replicated))

  @functools.partial(jax.jit, **shardings)
  def eval_batch(state: RetrainState, batch, mask):
    model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
    logits, _ = model(batch['image'], train=False)
    return jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)
  return eval_batch


# -------------------------------------------------------------------------------------- loop


def retrain(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs or resumes a retraining; returns the summary also written to result.json."""
  check_config(config)
  geno = resolve_genotype(config.genotype, config.model.network)
  standalone.check_network(geno, config.model.network)
  workdir = checkpoint.resolve(workdir)
  data_dir = os.path.expanduser(config.data_dir)
  main = sharding.is_main_process()  # every process computes; process 0 logs and writes
  log = functools.partial(print, flush=True) if main else lambda *a, **k: None
  dp = sharding.make(int(config.get('mesh', {}).get('data', -1)))
  local_batch = dp.local_batch_size(config.batch_size)
  checkpoint.claim_workdir(workdir, experiment_identity(config, geno))
  if main:
    checkpoint.save_via_local(geno.save, os.path.join(workdir, 'genotype.json'))

  # ---- data: this process's rows of each global batch (all of them on one host)
  spec = data.get_spec(config.dataset)
  shard = dict(shard_index=dp.shard_index, num_shards=dp.num_shards)
  train_ds = data.make_dataset(config.dataset, config.train_split, batch_size=config.batch_size,
                               seed=config.seed, train=True, data_dir=data_dir,
                               cutout_length=config.cutout_length, **shard)
  test_ds = data.make_dataset(config.dataset, config.test_split, batch_size=config.batch_size,
                              seed=None, train=False, data_dir=data_dir, **shard)
  evaluate = functools.partial(data.evaluate, batch_size=local_batch,
                               to_global=dp.global_batch, **shard)
  steps_per_epoch = (config.steps_per_epoch or
                     data.num_examples(config.dataset, config.train_split, data_dir)
                     // config.batch_size)
  total_steps = config.epochs * steps_per_epoch

  # ---- model and state
  model = build_model(config, geno, spec)
  n_params = standalone.num_params(model)
  lr = bilevel.cosine_per_epoch(config.optim.lr, config.optim.lr_min, config.epochs,
                                steps_per_epoch)
  drop_prob = drop_path_schedule(config.drop_path_prob, config.epochs, steps_per_epoch)
  tx = make_optimizer(config.optim)
  graphdef, state = init_state(model, tx, config.seed)
  del model
  state = dp.replicate(state)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 keep=config.keep_checkpoints)
  restored, restored_step = ckpt.restore_latest(state, dp.replicated)
  if restored is not None:
    state = restored
    log(f'Resumed from the checkpoint at step {restored_step} in {ckpt.directory}')
  start = int(state.step)
  log(f'dnas retrain: {config.dataset} ({config.train_split} -> {config.test_split}), '
      f'{describe_model(config)}, {n_params:,} parameters '
      f'(without the auxiliary head); {total_steps} steps ({config.epochs} epochs x '
      f'{steps_per_epoch}); backend={jax.default_backend()}, '
      f'{dp.describe(config.batch_size)}')

  # ---- step: state replicated, the batch split on its batch axis
  # Compiled ahead of the first call: the compiler's freed memory and JAX's tracing caches go
  # back to the OS before the step's buffers are allocated (trainers/host_memory.py).
  step_fn = host_memory.CompileFirst(jax.jit(
      functools.partial(train_step, graphdef=graphdef, tx=tx, aux_weight=config.aux_weight),
      in_shardings=(dp.replicated, dp.batch, dp.replicated, dp.replicated),
      out_shardings=(dp.replicated, dp.replicated), donate_argnums=0), drop_trace_caches=True)
  eval_batch = make_eval_fn(graphdef, dp)

  writer = SummaryWriter(os.path.join(workdir, 'tb')) if main else sharding.NullWriter()
  test_accuracy = None
  last_saved = restored_step
  progress = tqdm.tqdm(total=total_steps, initial=start, desc='retrain', unit='step',
                       dynamic_ncols=True, mininterval=2.0, **({} if main else {'disable': True}))
  say = progress.write if main else log
  preemption = checkpoint.Preemption()
  t_start = time.time()
  try:
    for step in range(start, total_steps):
      # Host scalars (numpy): the same on every process, whatever the device layout.
      state, metrics = step_fn(state, dp.global_batch(train_ds[step]), np.asarray(lr(step)),
                               np.asarray(drop_prob(step)))
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
        log(f'\nfirst step (compile included): {time.time() - t_start:.1f} s')
      if done % config.log_every_steps == 0 or done == total_steps:
        for k, v in metrics.items():
          writer.add_scalar(f'train/{k}', v, done)
        writer.add_scalar('train/lr', float(lr(done - 1)), done)
      if done % steps_per_epoch == 0 or done == total_steps:
        epoch = done / steps_per_epoch
        if int(round(epoch)) % config.eval_every_epochs == 0 or done == total_steps:
          test_accuracy = evaluate(eval_batch, state, test_ds)
          writer.add_scalar('test/accuracy', test_accuracy, done)
          say(f'epoch {epoch:.0f}: test accuracy {test_accuracy:.4f}, '
              f'train loss {metrics["main_loss"]:.4f}')
      # SIGTERM (preemption): save this step and stop; the same command resumes here.
      preempted = preemption.reached(done) and done < total_steps
      if done % config.checkpoint_every_steps == 0 or done == total_steps or preempted:
        ckpt.save(done, state)
        last_saved = done
      writer.flush()
      if preempted:
        raise checkpoint.Preempted(
            f'SIGTERM: stopped after step {done} of {total_steps} and saved its checkpoint in '
            f'{ckpt.directory}; rerun the same command to resume')
  finally:
    preemption.close()
    progress.close()
    writer.close()
    ckpt.close()

  if test_accuracy is None:  # resumed a finished run: evaluate once more for the summary
    test_accuracy = evaluate(eval_batch, state, test_ds)
  result = {'test_accuracy': test_accuracy, 'steps': total_steps, 'epochs': config.epochs,
            'params': n_params, 'dataset': config.dataset, 'test_split': config.test_split,
            'genotype_arg': config.genotype, 'genotype': geno.to_json(),
            'wall_seconds_this_run': round(time.time() - t_start, 1)}
  if main:
    checkpoint.write_text(os.path.join(workdir, 'result.json'), json.dumps(result, indent=2))
  log(f'test accuracy: {test_accuracy:.4f} ({config.test_split} split, '
      f'{result["wall_seconds_this_run"]:.0f} s)')
  return result
