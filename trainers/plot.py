"""Pictures of a search's results: a genotype's two cells, and the alphas over the epochs.

matplotlib is an optional extra (`pip install 'dnas[plot]'`); nothing else in dnas needs it.
Both functions write every requested format (PNG, SVG) and return the paths written.

  plot_genotype       the normal and reduction cells as DAGs: inputs c_{k-2}, c_{k-1} on
                      the left, the intermediate nodes, the concatenated output c_{k}; each
                      kept edge labelled (and coloured) with its op.
  plot_nb201_cell     an NAS-Bench-201 cell: nodes 0 (input) to 3 (output) in a row, all 6
                      edges labelled with their op (`none` edges dashed and faint).
  plot_alpha_history  from a search's alphas.jsonl: per cell type (DARTS normal/reduce, the
                      NB201 cell), one small heatmap per edge (ops x epochs) of the softmax of
                      its alphas (or the raw alphas).
"""
import json
import os
from typing import Sequence

import numpy as np

from dnas import nb201_string
from dnas.cells import darts
from dnas.genotype import Genotype

FORMATS = ('png', 'svg')
_OP_COLORS = {'none': '#999999', 'max_pool_3x3': '#1f77b4', 'avg_pool_3x3': '#17becf',
              'skip_connect': '#7f7f7f', 'sep_conv_3x3': '#d62728', 'sep_conv_5x5': '#ff7f0e',
              'dil_conv_3x3': '#2ca02c', 'dil_conv_5x5': '#9467bd',
              'nor_conv_1x1': '#ff7f0e', 'nor_conv_3x3': '#d62728'}


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("plotting needs matplotlib, which is not installed: "
                      "pip install 'dnas[plot]'") from None
  matplotlib.use('Agg')  # files only; no display needed
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, out_prefix: str, formats: Sequence[str]) -> list[str]:
  unknown = [f for f in formats if f not in FORMATS]
  if unknown:
    raise ValueError(f'unknown image format(s) {unknown}; valid: {", ".join(FORMATS)}')
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  paths = []
  for fmt in formats:
    path = f'{out_prefix}.{fmt}'
    fig.savefig(path, format=fmt, dpi=150, bbox_inches='tight')
    paths.append(path)
  return paths


# ------------------------------------------------------------------------------------ cells


def _cell_layout(num_nodes: int) -> dict:
  """Inputs on the left (above and below), intermediate nodes in a row, output at the right
  below the row, so that every concat edge has its own direction."""
  pos = {0: (0.0, 1.8), 1: (0.0, -1.8)}
  for n in range(num_nodes):
    pos[2 + n] = (2.6 * (n + 1), 0.0)
  pos['out'] = (2.6 * num_nodes + 1.8, -1.9)
  return pos


def _edge(ax, src_xy, dst_xy, rad, color, label=None, lw=1.6, style='-'):
  """An arrow (straight or a quadratic arc) and its label at the curve's midpoint."""
  (x0, y0), (x1, y1) = src_xy, dst_xy
  ax.annotate('', xy=(x1, y1), xytext=(x0, y0),
              arrowprops=dict(arrowstyle='-|>', color=color, lw=lw, shrinkA=13, shrinkB=13,
                              linestyle=style, connectionstyle=f'arc3,rad={rad}'))
  if label:
    # arc3's control point is the chord midpoint + rad * (dy, -dx); the curve's midpoint is
    # halfway there, and its tangent there is parallel to the chord: the label lies along it.
    mx = (x0 + x1) / 2 + rad * (y1 - y0) / 2
    my = (y0 + y1) / 2 - rad * (x1 - x0) / 2
    if rad == 0.0:  # straight: past the middle, where edges from one source are further apart
      mx, my = x0 + 0.6 * (x1 - x0), y0 + 0.6 * (y1 - y0)
    angle = np.degrees(np.arctan2(y1 - y0, x1 - x0))
    ax.text(mx, my, label, fontsize=7, ha='center', va='center', color=color,
            rotation=angle, rotation_mode='anchor',
            bbox=dict(boxstyle='round,pad=0.1', fc='white', ec='none', alpha=0.9))


def draw_cell(ax, gene, concat, title: str) -> None:
  """One cell as a DAG on a matplotlib axis: an arrow per kept edge, labelled with its op."""
  num_nodes = len(gene) // 2
  pos = _cell_layout(num_nodes)
  for i, (op, src) in enumerate(gene):
    dst = 2 + i // 2
    # node -> non-adjacent node would cross the nodes in between: bend it above the row
    rad = -0.45 if src >= 2 and dst - src > 1 else 0.0
    _edge(ax, pos[src], pos[dst], rad, _OP_COLORS.get(op, 'black'), op)
  for s in concat:
    _edge(ax, pos[s], pos['out'], 0.0, '#bbbbbb', lw=1.0, style='--')
  for node, (x, y) in pos.items():
    if node in (0, 1, 'out'):
      label = {0: '$c_{k-2}$', 1: '$c_{k-1}$', 'out': '$c_{k}$'}[node]
      face = '#fdae61' if node == 'out' else '#a6d96a'
      box = 'round,pad=0.35'
    else:
      label, face, box = str(node - 2), '#abd9e9', 'circle,pad=0.35'
    ax.text(x, y, label, ha='center', va='center', fontsize=10,
            bbox=dict(boxstyle=box, fc=face, ec='black', lw=0.8))
  xs = [p[0] for p in pos.values()]
  ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
  ax.set_ylim(-2.5, 2.5)
  ax.set_aspect('equal')  # label angles in data coordinates are the angles on the page
  ax.set_title(title, fontsize=11)
  ax.axis('off')


def plot_genotype(geno: Genotype, out_prefix: str, title: str = '',
                  formats: Sequence[str] = FORMATS) -> list[str]:
  """Normal and reduction cells side by side; writes out_prefix.{png,svg}."""
  plt = _pyplot()
  fig, axes = plt.subplots(2, 1, figsize=(10, 8.4))
  draw_cell(axes[0], geno.normal, geno.normal_concat, 'normal cell')
  draw_cell(axes[1], geno.reduce, geno.reduce_concat, 'reduction cell')
  if title:
    fig.suptitle(title, fontsize=12)
  try:
    return _save(fig, out_prefix, formats)
  finally:
    plt.close(fig)


def draw_nb201_cell(ax, arch: str, title: str) -> None:
  """An NB201 cell on a matplotlib axis: nodes 0..3 in a row; edges between neighbours
  straight, 0 -> 2 and 0 -> 3 arcs above, 1 -> 3 an arc below."""
  ops = nb201_string.parse(arch)
  pos = {n: (2.6 * n, 0.0) for n in range(nb201_string.NUM_NODES)}
  for e, (target, source) in enumerate(nb201_string.EDGES):
    span = target - source
    rad = (0.0 if span == 1 else 0.4 if (source, target) == (1, 3)
           else -0.4 if span == 2 else -0.5)
    none = ops[e] == 'none'
    _edge(ax, pos[source], pos[target], rad, '#bbbbbb' if none else _OP_COLORS.get(ops[e], 'black'),
          ops[e], lw=1.0 if none else 1.6, style='--' if none else '-')
  last = nb201_string.NUM_NODES - 1
  for node, (x, y) in pos.items():
    face = '#a6d96a' if node == 0 else '#fdae61' if node == last else '#abd9e9'
    ax.text(x, y, str(node), ha='center', va='center', fontsize=10,
            bbox=dict(boxstyle='circle,pad=0.35', fc=face, ec='black', lw=0.8))
  ax.text(pos[0][0], -0.55, 'input', ha='center', va='top', fontsize=7)
  ax.text(pos[last][0], -0.55, 'output', ha='center', va='top', fontsize=7)
  ax.set_xlim(-0.8, pos[last][0] + 0.8)
  ax.set_ylim(-1.6, 2.4)
  ax.set_aspect('equal')
  ax.set_title(title, fontsize=9)
  ax.axis('off')


def plot_nb201_cell(arch: str, out_prefix: str, title: str = '',
                    formats: Sequence[str] = FORMATS) -> list[str]:
  """The NB201 cell of an arch string; writes out_prefix.{png,svg}."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(9, 4.2))
  draw_nb201_cell(ax, arch, title or arch)
  try:
    return _save(fig, out_prefix, formats)
  finally:
    plt.close(fig)


# ----------------------------------------------------------------------------- alpha history


def _cell_keys(record: dict) -> list[str]:
  """The alpha matrices (edges x ops) of a record: DARTS normal/reduce, NB201 alphas."""
  return [k for k, v in record.items()
          if isinstance(v, list) and v and all(isinstance(row, list) and row for row in v)]


def read_alpha_history(path: str) -> list[dict]:
  """The records of a search's alphas.jsonl ({step, epoch, normal, reduce} for DARTS,
  {step, epoch, alphas} for NB201), in order."""
  try:
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist; dnas-search writes it as '
                            '<workdir>/alphas.jsonl') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not an alpha history (JSON lines): {e}') from None
  if not records or not all('epoch' in r and _cell_keys(r) for r in records):
    raise ValueError(f'{path} holds no alpha records ({{step, epoch, normal, reduce}} or '
                     '{step, epoch, alphas} per line); it is written by dnas-search as '
                     '<workdir>/alphas.jsonl')
  return records


def _primitives_for(path: str, num_ops: int) -> tuple[str, ...]:
  """The op names of the search that wrote `path` (its workdir's experiment.json), else
  DARTS' when the count matches, else op indices."""
  experiment = os.path.join(os.path.dirname(os.path.abspath(path)), 'experiment.json')
  if os.path.exists(experiment):
    with open(experiment) as f:
      ops = json.load(f).get('model.primitives')
    if ops and len(ops) == num_ops:
      return tuple(ops)
  if num_ops == len(darts.PRIMITIVES):
    return darts.PRIMITIVES
  if num_ops == len(nb201_string.OPS):
    return nb201_string.OPS
  return tuple(f'op {i}' for i in range(num_ops))


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _edge_names(num_edges: int, nb201: bool = False) -> list[str]:
  """Reference edge order: node 0's inputs, then node 1's, ... ('k-2 -> n0', ...); NB201's
  edges '0 -> 1', '0 -> 2', '1 -> 2', ..."""
  if nb201:
    return [f'{j} -> {i}' for i, j in nb201_string.EDGES][:num_edges]
  names, node = [], 0
  while len(names) < num_edges:
    for src in range(2 + node):
      names.append(f'{("k-2", "k-1")[src] if src < 2 else "n%d" % (src - 2)} -> n{node}')
    node += 1
  return names[:num_edges]


def plot_alpha_history(path: str, out_prefix: str, raw: bool = False,
                       formats: Sequence[str] = FORMATS) -> list[str]:
  """Heatmaps of the op weights over the epochs: one panel per edge (ops x epochs), the
  normal cell's edges above the reduction cell's. Writes out_prefix.{png,svg}."""
  records = read_alpha_history(path)
  epochs = np.asarray([r['epoch'] for r in records], float)
  plt = _pyplot()
  keys = _cell_keys(records[0])
  cells = {('cell' if k == 'alphas' else k): np.asarray([r[k] for r in records], float)
           for k in keys}
  num_edges, num_ops = next(iter(cells.values())).shape[1:]
  ops = _primitives_for(path, num_ops)
  cols = 7
  rows_per_cell = -(-num_edges // cols)
  fig, axes = plt.subplots(len(cells) * rows_per_cell, cols, squeeze=False,
                           constrained_layout=True,
                           figsize=(2.1 * cols, 1.7 * len(cells) * rows_per_cell + 0.8))
  values = {k: (v if raw else _softmax(v)) for k, v in cells.items()}
  # One colour scale over every panel, spanning the data: early in a search all weights sit
  # near 1/num_ops, and a 0..1 scale would show nothing.
  vmin = min(v.min() for v in values.values())
  vmax = max(v.max() for v in values.values())
  names = _edge_names(num_edges, nb201=list(cells) == ['cell'])
  image = None
  for c, cell in enumerate(cells):
    for e in range(rows_per_cell * cols):
      ax = axes[c * rows_per_cell + e // cols, e % cols]
      if e >= num_edges:
        ax.axis('off')
        continue
      image = ax.imshow(values[cell][:, e, :].T, aspect='auto', cmap='viridis', vmin=vmin,
                        vmax=vmax, interpolation='nearest',
                        extent=(epochs[0] - 0.5, epochs[-1] + 0.5, num_ops - 0.5, -0.5))
      ax.set_title(f'{cell}: {names[e]}', fontsize=7)
      ax.tick_params(labelsize=6)
      ax.set_yticks(range(num_ops))
      ax.set_yticklabels(ops if e % cols == 0 else [''] * num_ops)
      ax.set_xticks(epochs if len(epochs) <= 6 else epochs[::max(1, len(epochs) // 5)])
      if e // cols != rows_per_cell - 1 and e + cols < num_edges:
        ax.set_xticklabels([])
      else:
        ax.set_xlabel('epoch', fontsize=6)
  fig.suptitle(f'{"raw alphas" if raw else "softmax(alphas)"} per edge over the epochs '
               f'({os.path.basename(path)}, {len(records)} records)', fontsize=10)
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01,
               label='alpha' if raw else 'op weight')
  try:
    return _save(fig, out_prefix, formats)
  finally:
    plt.close(fig)
