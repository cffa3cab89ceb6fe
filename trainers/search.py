"""The search loop: data, state, jitted bilevel step, checkpoints, metrics, genotype.

`search(config, workdir)` runs (or resumes) a search and returns its summary. Outputs in the
workdir: checkpoints/ (orbax), tb/ (TensorBoard events), alphas.jsonl (the alpha history),
genotype.json, result.json. The workdir may be remote (gs://). The batch is sharded over the
devices of `config.mesh` (trainers/sharding.py); with several processes every one computes,
process 0 alone logs and writes the files.
"""
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from etils import epath
from flax import nnx
from tensorboardX import SummaryWriter

from dnas import arch, bilevel, genotype as genotype_lib, regularizers, relaxations
from dnas.regularizers import rdarts
from dnas.cells import darts
from dnas.state import SearchState
from dnas.trainers import checkpoint, data, host_memory, sharding, spaces


# ------------------------------------------------------------------------------------ config


def check_config(config: ml_collections.ConfigDict) -> None:
  """Rejects values the search cannot run with, naming the field and the fix."""
  data.get_spec(config.dataset)
  relaxations.load_module(config.relaxation_module)
  relaxations.make(config.relaxation, config.relaxation_args, total_steps=1)  # name and args
  make_regularizers(config, total_steps=1, steps_per_epoch=1)  # names, args, relaxation
  spaces.get(config.model.space).check(config)  # the space name and its model fields
  make_alpha_gradient(config, loss_fn=None)  # order / hvp / xi combination
  for field in ('batch_size', 'epochs', 'log_every_steps', 'checkpoint_every_steps'):
    if int(config[field]) <= 0:
      raise ValueError(f'config.{field} must be positive, got {config[field]}')
  mesh_data(config)


def mesh_data(config) -> int:
  """config.mesh.data: devices the batch is split over (-1: all); -1 without the field."""
  n = int(config.get('mesh', {}).get('data', -1))
  if n == 0 or n < -1:
    raise ValueError(f'config.mesh.data must be -1 (all devices) or a positive count, got {n}')
  return n


def experiment_identity(config) -> dict:
  """The fields that make two runs the same experiment (a checkpoint of one fits the other)."""
  return {'dataset': config.dataset, 'model': spaces.model_identity(config),
          'relaxation': config.relaxation, 'relaxation_args': config.relaxation_args.to_dict(),
          'bilevel': config.bilevel.to_dict(),
          'seed': config.seed, 'batch_size': config.batch_size,
          **regularizer_identity(config)}


def make_regularizers(config, *, total_steps: int, steps_per_epoch: int):
  return regularizers.make(config.get('regularizers', ()), config.get('regularizer_args'),
                           total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                           relaxation=config.relaxation)


def regularizer_identity(config) -> dict:
  """The selected regularizers and their args; nothing without any, so that workdirs of
  searches from before regularizers existed still match."""
  names = tuple(config.get('regularizers', ()))
  if not names:
    return {}
  args = config.get('regularizer_args') or {}
  return {'regularizers': list(names),
          'regularizer_args': {n: (args[n].to_dict() if n in args else {}) for n in names}}


# ------------------------------------------------------------------------------------- model


def build_model(config, spec: data.DatasetSpec, total_steps: int,
                regs: regularizers.Regularizers | None = None) -> darts.SearchNetwork:
  """The supernet; `total_steps` (the search length) feeds the relaxation's schedule;
  `regs` the edge modifications of regularizers (DARTS-, P-DARTS)."""
  relaxation = relaxations.make(config.relaxation, config.relaxation_args,
                                total_steps=total_steps)
  if config.model.space != darts.SPACE:
    return spaces.get(config.model.space).build(config, spec, relaxation, config.seed)
  return darts.SearchNetwork(
      num_classes=spec.num_classes, in_channels=spec.image_shape[-1],
      channels=config.model.channels, layers=config.model.layers,
      primitives=tuple(config.model.primitives), num_nodes=config.model.num_nodes,
      relaxation=relaxation, conv_form=config.model.conv_form, regularizers=regs,
      **spaces.pcdarts_settings(config),
      rngs=nnx.Rngs(config.seed))


def make_alpha_gradient(config, *, loss_fn, alpha_loss_term=None):
  """First or second order from `config.bilevel`; xi defaults to the weight lr in force.
  `alpha_loss_term(alphas, step)`: regularizers' terms, added to the val loss only."""
  b = config.bilevel
  xi = b.get('xi')
  if b.order == 2 and xi is None:
    xi = lambda state: state.weight_opt_state.hyperparams['learning_rate']
  return bilevel.alpha_gradient_fn(b.order, loss_fn=loss_fn, alpha_loss_term=alpha_loss_term,
                                   hvp=b.get('hvp'), xi=xi,
                                   momentum=config.optim.momentum,
                                   weight_decay=config.optim.weight_decay)


def describe_bilevel(config) -> str:
  b = config.bilevel
  if b.order == 1:
    return 'first order'
  xi = 'the weight lr' if b.get('xi') is None else b.xi
  return f'second order (hvp={b.get("hvp") or "finite_difference"}, xi={xi})'


def hyperparams(config, lr: float, update_alphas: bool = True) -> dict:
  """The optimizers' hyperparameters at one step (the weight lr from the schedule), and
  whether the step updates the alphas (False during `optim.arch_warmup_epochs`)."""
  o = config.optim
  return {'update_alphas': np.asarray(update_alphas),
          'weight': {'learning_rate': lr, 'momentum': o.momentum,
                     'weight_decay': o.weight_decay, 'grad_clip': o.grad_clip},
          'alpha': {'learning_rate': o.arch_lr, 'b1': o.arch_b1, 'b2': o.arch_b2,
                    'weight_decay': o.arch_weight_decay}}


def arch_warmup_steps(config, steps_per_epoch: int) -> int:
  """Steps that train only the weights (`optim.arch_warmup_epochs`, PC-DARTS' 15 epochs)."""
  epochs = config.optim.get('arch_warmup_epochs', 0)
  if not isinstance(epochs, int) or isinstance(epochs, bool) or not 0 <= epochs <= config.epochs:
    raise ValueError(f'optim.arch_warmup_epochs must be a whole number of epochs from 0 to '
                     f'epochs ({config.epochs}), got {epochs!r}')
  return epochs * steps_per_epoch


def build_optimizers(config, steps_per_epoch: int):
  """DARTS' optimizers with their hyperparameters in the optimizer state
  (optax.inject_hyperparams), fed from the config every step (`hyperparams`) rather than
  compiled in as constants: a run resumed with more epochs or another lr reuses the compiled
  step from the persistent cache, and a checkpoint never overrides the config's values."""
  o = config.optim
  lr = bilevel.cosine_per_epoch(o.lr, o.lr_min, config.epochs, steps_per_epoch)
  initial = hyperparams(config, o.lr)
  weight_tx = optax.inject_hyperparams(bilevel.weight_optimizer)(**initial['weight'])
  alpha_tx = optax.inject_hyperparams(bilevel.alpha_optimizer)(**initial['alpha'])
  return weight_tx, alpha_tx, lr


def train_step(state: SearchState, train_batch, val_batch, hparams, *, step_kwargs, regs=None):
  """bilevel.search_step with this step's optimizer hyperparameters set in the state; the
  regularizers' loss terms (at the step's starting alphas) join the metrics."""
  cast = lambda d: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
  state = state.replace(
      weight_opt_state=state.weight_opt_state._replace(hyperparams=cast(hparams['weight'])),
      alpha_opt_state=state.alpha_opt_state._replace(hyperparams=cast(hparams['alpha'])))
  terms = regs.loss_terms(state.alphas, state.step) if regs else {}
  state, metrics = bilevel.search_step(state, train_batch, val_batch,
                                       update_alphas=hparams['update_alphas'], **step_kwargs)
  return state, {**metrics, **{f'regularizer_loss/{k}': v for k, v in terms.items()}}


def init_state(model, weight_tx, alpha_tx, seed: int):
  graphdef, alphas, batch_stats, weights = arch.split(model)
  state = SearchState(step=jnp.zeros((), jnp.int32), weights=weights, alphas=alphas,
                      batch_stats=batch_stats, weight_opt_state=weight_tx.init(weights),
                      alpha_opt_state=alpha_tx.init(alphas),
                      rng=jax.random.key_data(jax.random.key(seed + 1)))
  return graphdef, state


def op_weights(config, graphdef, state: SearchState) -> dict:
  """Cell type -> the relaxation's deterministic op weights of the current alphas
  (no sample), as numpy."""
  model = arch.merge(graphdef, state.alphas, state.batch_stats, state.weights)
  return spaces.get(config.model.space).op_weights(model)


def derive_genotype(config, graphdef, state, regs=None, alphas=None) -> genotype_lib.Genotype:
  """DARTS' rule on the weights the relaxation reads its genotype off, then the
  regularizers' rewrites (P-DARTS' skip cap). `alphas` (raw (normal, reduce) arrays, e.g.
  an earlier epoch's) replace the state's."""
  model = arch.merge(graphdef, state.alphas, state.batch_stats, state.weights)
  if config.model.space != darts.SPACE:  # the space's own read-off (NB201: an arch string)
    return spaces.get(config.model.space).derive(config, model)
  if alphas is not None:
    model.alphas_normal[...], model.alphas_reduce[...] = (jnp.asarray(a) for a in alphas)
  ops = tuple(config.model.primitives)
  derive = lambda n, r: genotype_lib.derive(n, r, ops, num_nodes=config.model.num_nodes,
                                            space=darts.SPACE)
  weights = tuple(np.asarray(w) for w in model.genotype_weights())
  geno = derive(*weights)
  return regs.postprocess(geno, weights, ops, derive) if regs else geno


def normal_cell_counts(geno) -> dict:
  """Skip connections and parameter-free ops (skip, pools) in a genotype's normal cell."""
  ops = [op for op, _ in geno.normal]
  return {'normal_cell_skips': sum(op == 'skip_connect' for op in ops),
          'normal_cell_parameter_free': sum(op in ('skip_connect', 'max_pool_3x3',
                                                   'avg_pool_3x3', 'none') for op in ops)}


def make_eigenvalue_fn(graphdef, regs, loss_fn, batch):
  """R-DARTS' monitor: state -> the largest eigenvalue of the Hessian of the val loss
  w.r.t. the alphas on one fixed val batch, by power iteration on exact (jvp of grad)
  Hessian-vector products. One compiled HVP, called `iters` times at most."""
  from jax.flatten_util import ravel_pytree
  cfg = next(r for r in regs.items if r.needs_eigenvalue)

  @jax.jit
  def hvp(state, flat, v):
    _, unravel = ravel_pytree(state.alphas)
    loss = lambda f: loss_fn(state.weights, unravel(f), state.batch_stats, batch,
                             jax.random.key(0), state.step)[0]
    return rdarts.make_hvp(loss)(flat, v)

  def eigenvalue(state):
    flat, _ = ravel_pytree(state.alphas)
    v0 = np.random.default_rng(0).standard_normal(flat.shape)
    return rdarts.largest_eigenvalue(lambda v: hvp(state, flat, jnp.asarray(v, flat.dtype)),
                                     v0, iters=cfg.iters, tol=cfg.tol)
  return eigenvalue


# -------------------------------------------------------------------------------------- eval


def make_eval_fn(graphdef, dp: sharding.DataParallel | None = None):
  shardings = ({} if dp is None else
               dict(in_shardings=(dp.replicated, dp.batch, dp.batch), out_shardings=dp.replicated))

  @functools.partial(jax.jit, **shardings)
  def eval_batch(state: SearchState, batch, mask):
    model = arch.merge(graphdef, state.alphas, state.batch_stats, state.weights)
    # The step: a regularizer's edge modification in force (DARTS-'s beta) applies here too.
    logits = model(batch['image'], train=False, step=state.step)
    correct = (jnp.argmax(logits, -1) == batch['label']) * mask
    return jnp.sum(correct)
  return eval_batch


# -------------------------------------------------------------------------------------- loop


class AlphaHistory:
  """alphas.jsonl: one line per record, {step, epoch, normal, reduce} (raw alphas).

  Kept in memory too, so that every process of a multi-host run reads the same records
  while process 0 alone (`write`) writes the file (local or remote: rewritten whole)."""

  def __init__(self, path: str, *, write: bool = True):
    self.path = epath.Path(path)
    self.write = write
    self.lines: list[str] = []

  def truncate_after(self, step: int) -> None:
    """Loads the records up to a resumed checkpoint's step and drops newer ones from the
    file, so a resumed run does not duplicate them."""
    lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    self.lines = [line for line in lines if json.loads(line)['step'] <= step]
    if self.write and len(self.lines) != len(lines):
      checkpoint.write_text(os.fspath(self.path), ''.join(self.lines))

  def append(self, step: int, epoch: float, state: SearchState, **extra) -> None:
    """`extra`: per-epoch monitor values kept with the alphas (skip count, eigenvalue)."""
    # One key per ArchParam, 'alphas_' dropped: DARTS normal, reduce; NB201 alphas.
    record = {'step': step, 'epoch': epoch,
              **{name.removeprefix('alphas_'): np.asarray(value[...]).round(6).tolist()
                 for name, value in state.alphas.items()}, **extra}
    self.lines.append(json.dumps(record) + '\n')
    if self.write:
      checkpoint.write_text(os.fspath(self.path), ''.join(self.lines))

  def read(self) -> list[dict]:
    return [json.loads(line) for line in self.lines]


def log_alpha_scalars(writer, step, weights_by_cell, primitives):
  for name, w in weights_by_cell.items():
    for k, op in enumerate(primitives):
      writer.add_scalar(f'alphas/{name}/{op}', float(w[:, k].mean()), step)


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs or resumes a DARTS search; returns the summary also in result.json."""
  check_config(config)
  workdir = checkpoint.resolve(workdir)
  data_dir = os.path.expanduser(config.data_dir)
  main = sharding.is_main_process()
  log = functools.partial(print, flush=True) if main else lambda *a, **k: None
  dp = sharding.make(mesh_data(config))
  local_batch = dp.local_batch_size(config.batch_size)
  checkpoint.claim_workdir(workdir, experiment_identity(config))

  # ---- data: this process's rows of each global batch (all of them on one host)
  spec = data.get_spec(config.dataset)
  shard = dict(shard_index=dp.shard_index, num_shards=dp.num_shards)
  train_ds = data.make_dataset(config.dataset, 'train', batch_size=config.batch_size,
                               seed=config.seed, train=True, data_dir=data_dir, **shard)
  val_ds = data.make_dataset(config.dataset, 'val', batch_size=config.batch_size,
                             seed=config.seed + 1, train=True, data_dir=data_dir, **shard)
  val_eval_ds = data.make_dataset(config.dataset, 'val', batch_size=config.batch_size,
                                  seed=None, train=False, data_dir=data_dir, **shard)
  evaluate = functools.partial(data.evaluate, batch_size=local_batch,
                               to_global=dp.global_batch, **shard)
  steps_per_epoch = (config.steps_per_epoch or
                     data.num_examples(config.dataset, 'train', data_dir) // config.batch_size)
  total_steps = config.epochs * steps_per_epoch
  warmup_steps = arch_warmup_steps(config, steps_per_epoch)

  # ---- model and state
  regs = make_regularizers(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  model = build_model(config, spec, total_steps, regs)
  weight_tx, alpha_tx, lr_schedule = build_optimizers(config, steps_per_epoch)
  graphdef, state = init_state(model, weight_tx, alpha_tx, config.seed)
  del model
  state = dp.replicate(state)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 keep=config.keep_checkpoints)
  restored, restored_step = ckpt.restore_latest(state, dp.replicated)
  history = AlphaHistory(os.path.join(workdir, 'alphas.jsonl'), write=main)
  if restored is not None:
    state = restored
    history.truncate_after(restored_step)
    log(f'Resumed from the checkpoint at step {restored_step} in {ckpt.directory}')
  else:
    history.truncate_after(-1)
  start = int(state.step)
  n_weights = sum(x.size for x in jax.tree.leaves(state.weights))
  space = spaces.get(config.model.space)
  log(f'dnas search: {config.dataset}, {space.describe(config)}, '
      f'relaxation={config.relaxation}, '
      f'{describe_bilevel(config)}; '
      f'regularizers: {", ".join(r.name for r in regs.items) or "none"}; '
      f'{n_weights:,} weights; {total_steps} steps ({config.epochs} epochs x '
      f'{steps_per_epoch}); backend={jax.default_backend()}, '
      f'{dp.describe(config.batch_size)}' +
      (f'; weights only (no architecture step) for the first {warmup_steps} steps'
       if warmup_steps else ''))

  # ---- step
  loss_fn = bilevel.classification_loss(graphdef)
  # Regularizers' loss terms move the alphas only: they join the architecture (val) loss;
  # the weight step and SDARTS' attack see the plain train loss.
  alpha_loss_term = regs.loss if regs.has_loss() else None
  alpha_loss_fn = bilevel.with_alpha_term(loss_fn, alpha_loss_term)
  alpha_gradient = make_alpha_gradient(config, loss_fn=loss_fn, alpha_loss_term=alpha_loss_term)
  # Compiled ahead of the first call so that the compiler's freed memory and JAX's tracing
  # caches go back to the OS before the step's buffers are allocated (trainers/host_memory.py;
  # nothing else has been compiled yet that would have to trace again).
  step_fn = host_memory.CompileFirst(jax.jit(functools.partial(
      train_step, regs=regs, step_kwargs=dict(
          loss_fn=loss_fn, weight_tx=weight_tx, alpha_tx=alpha_tx, alpha_gradient=alpha_gradient,
          weight_step_alphas=regs.weight_step_alphas if regs.has_perturbation() else None)),
      # State replicated, batches split on their batch axis: the data-parallel step.
      in_shardings=(dp.replicated, dp.batch, dp.batch, dp.replicated),
      out_shardings=(dp.replicated, dp.replicated), donate_argnums=0),
      drop_trace_caches=True)
  eval_batch = make_eval_fn(graphdef, dp)
  eigenvalue_fn = (make_eigenvalue_fn(graphdef, regs, alpha_loss_fn,
                                      dp.global_batch(val_ds[0]))
                   if regs.needs_eigenvalue else None)
  primitives = tuple(config.model.primitives)
  # A run that already met an early-stopping rule (e.g. rerun after it stopped) trains no more.
  stop = (regs.should_stop(history.read(), primitives)
          if start > 0 and start % steps_per_epoch == 0 else None)
  if stop is not None:
    log(f'early stop (already met at step {start}): {stop.rule}: {stop.reason}')

  writer = SummaryWriter(os.path.join(workdir, 'tb')) if main else sharding.NullWriter()
  val_accuracy = None
  last_saved = restored_step
  progress = tqdm.tqdm(total=total_steps, initial=start, desc='search', unit='step',
                       dynamic_ncols=True, mininterval=2.0, **({} if main else {'disable': True}))
  say = progress.write if main else log  # a line above the progress bar, process 0 only
  preemption = checkpoint.Preemption()
  t_start = time.time()
  try:
    for step in range(start, total_steps if stop is None else start):
      hparams = hyperparams(config, float(lr_schedule(step)),
                            update_alphas=step >= warmup_steps)
      state, metrics = step_fn(state, dp.global_batch(train_ds[step]),
                               dp.global_batch(val_ds[step]), hparams)
      done = step + 1
      metrics = {k: float(v) for k, v in metrics.items()}
      if not all(math.isfinite(v) for v in metrics.values()):
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        raise FloatingPointError(
            f'non-finite {bad} at step {done}; last good checkpoint: '
            f'{"step %d" % last_saved if last_saved is not None else "none"} in '
            f'{ckpt.directory}. Lower --config.optim.lr or --config.optim.arch_lr and rerun: '
            f'the run resumes from that checkpoint')
      progress.update(1)
      progress.set_postfix(loss=f'{metrics["train_loss"]:.3f}',
                           acc=f'{metrics["train_accuracy"]:.3f}', refresh=False)
      if done == start + 1:
        log(f'\nfirst step (compile included): {time.time() - t_start:.1f} s')
      if done % config.log_every_steps == 0 or done == total_steps:
        for k, v in metrics.items():
          writer.add_scalar(f'search/{k}', v, done)
        writer.add_scalar('search/lr', hparams['weight']['learning_rate'], done)
        for k, v in regs.scalars(step).items():
          writer.add_scalar(f'regularizers/{k}', float(v), done)
        log_alpha_scalars(writer, done, op_weights(config, graphdef, state),
                          config.model.primitives)
      epoch_end = done % steps_per_epoch == 0
      if epoch_end or done == total_steps:
        epoch = done / steps_per_epoch
        # Skips of DARTS' own read-off (before any cap): the collapse that rules watch.
        geno = derive_genotype(config, graphdef, state)
        monitor = (normal_cell_counts(geno) if config.model.space == darts.SPACE
                   else {'normal_cell_skips': space.skips(geno)})
        if eigenvalue_fn is not None:
          monitor['eigenvalue'] = float(eigenvalue_fn(state))
        for k, v in monitor.items():
          writer.add_scalar(f'search/{k}' if k != 'eigenvalue' else 'regularizers/rdarts/'
                            'hessian_eigenvalue', v, done)
        history.append(done, epoch, state, **monitor)
        if int(round(epoch)) % config.eval_every_epochs == 0 or done == total_steps:
          val_accuracy = evaluate(eval_batch, state, val_eval_ds)
          writer.add_scalar('search/supernet_val_accuracy', val_accuracy, done)
          say(f'epoch {epoch:.0f}: supernet val accuracy {val_accuracy:.4f}, '
              f'train loss {metrics["train_loss"]:.4f}, {space.summary(geno)}'
              + (f', eigenvalue {monitor["eigenvalue"]:.4g}'
                 if 'eigenvalue' in monitor else ''))
        stop = regs.should_stop(history.read(), primitives) if regs else None
      # SIGTERM (preemption): save this step and stop; the same command resumes here.
      preempted = preemption.reached(done) and done < total_steps and stop is None
      if (done % config.checkpoint_every_steps == 0 or done == total_steps or stop is not None
          or preempted):
        ckpt.save(done, state)
        last_saved = done
      writer.flush()
      if stop is not None:
        say(f'early stop at epoch {done / steps_per_epoch:g} (step {done}): '
            f'{stop.rule}: {stop.reason}')
        break
      if preempted:
        raise checkpoint.Preempted(
            f'SIGTERM: stopped after step {done} of {total_steps} and saved its checkpoint in '
            f'{ckpt.directory}; rerun the same command to resume')
  finally:
    preemption.close()
    progress.close()
    writer.close()
    ckpt.close()

  if val_accuracy is None:  # resumed a finished run: evaluate once more for the summary
    val_accuracy = evaluate(eval_batch, state, val_eval_ds)
  alphas, genotype_epoch = None, None
  if stop is not None and stop.genotype_epoch is not None:  # R-DARTS: an earlier epoch's
    record = next((r for r in history.read() if round(r['epoch']) == stop.genotype_epoch), None)
    if record is not None:
      alphas, genotype_epoch = (record['normal'], record['reduce']), stop.genotype_epoch
  geno = derive_genotype(config, graphdef, state, regs, alphas)
  genotype_path = os.path.join(workdir, 'genotype.json')
  if main:
    checkpoint.save_via_local(lambda path: space.save(geno, path), genotype_path)
  result = {'steps': int(state.step), 'supernet_val_accuracy': val_accuracy,
            'wall_seconds_this_run': round(time.time() - t_start, 1),
            'genotype': space.to_json(geno)}
  if stop is not None:
    result['early_stop'] = {'rule': stop.rule, 'reason': stop.reason, 'step': int(state.step),
                            'genotype_epoch': genotype_epoch}
    log(f'search stopped early by {stop.rule} at step {int(state.step)} of {total_steps}'
        + (f'; genotype from epoch {genotype_epoch}' if genotype_epoch is not None else ''))
  if main:
    checkpoint.write_text(os.path.join(workdir, 'result.json'), json.dumps(result, indent=2))
  log(f'supernet val accuracy: {val_accuracy:.4f}')
  log(space.report(geno, genotype_path))
  return result
