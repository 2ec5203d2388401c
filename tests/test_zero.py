# Copyright (c) mmolor contributors. All rights reserved.
"""OLOR under ZeRO: mmengine's ``ZeroRedundancyOptimizer`` config form.

The runs are ``tools/dist_train.sh CONFIG 2`` (two gloo processes on the
CPU) on a tiny mmengine model and dataset defined below; the configs load
this module with ``custom_imports``. Each run is compared with an unsharded
run (plain OLORAdamW under DDP) on the same data: the weights and every
optimizer state, anchors included, are equal bit for bit. ZeRO only changes
which rank computes each parameter's update, and the update of one
parameter does not depend on which others share the step, so bitwise
equality is what to expect (and it holds here).

``tests/test_fsdp.py`` reuses the model, data, hook and helpers.
"""
import os
import os.path as osp
import re
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.registry import DATASETS, HOOKS, MODELS
from torch import nn
from torch.utils.data import Dataset

import mmolor  # noqa: F401  registries

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(ROOT, 'tests')


# --- what the configs build (registered in mmengine's root registries) ---
@MODELS.register_module(force=True)
class TinyOLORNet(BaseModel):
    """A pre-trained ``backbone`` (rolls back) and a new ``head`` (does
    not); tensors of different sizes, so that ZeRO's greedy partition and
    FSDP's flat shards split them between two ranks."""

    def __init__(self, data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.backbone = nn.Sequential(
            nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 20), nn.ReLU(),
            nn.Linear(20, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.backbone(inputs))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


@DATASETS.register_module(force=True)
class TinyOLORData(Dataset):
    """Fixed random samples, the same in every process."""

    def __init__(self, num=32):
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(num, 12, generator=gen)
        self.labels = torch.randint(0, 4, (num, ), generator=gen)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], labels=self.labels[index])


@HOOKS.register_module(force=True)
class DumpOptimizerShardHook(Hook):
    """At the end, every rank saves what its own optimizer holds: anchors
    and groups by parameter name (ZeRO: its local optimizer's), and its
    parameters (FSDP: its flat shard of them)."""

    def after_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        names = {p: n for n, p in model.named_parameters()}
        optimizer = runner.optim_wrapper.optimizer
        # The local optimizer: ZeRO's `optim`, DeepSpeed's `optimizer`.
        local = getattr(optimizer, 'optim', None) or getattr(
            optimizer, 'optimizer', optimizer)
        groups = []
        for index, group in enumerate(local.param_groups):
            groups.append({k: v for k, v in group.items() if k != 'params'})
            # DeepSpeed's ZeRO steps one flat partition per group.
            for p in group['params']:
                names.setdefault(p, f'group{index}.partition')
            groups[-1]['params'] = [names[p] for p in group['params']]
        torch.save(
            dict(
                optimizer=type(optimizer).__name__,
                local=type(local).__name__,
                anchors={
                    names[p]: s['anchor'].clone()
                    for p, s in local.state.items() if 'anchor' in s
                },
                groups=groups,
                weights={
                    n: p.detach().clone()
                    for n, p in model.named_parameters()
                }), osp.join(runner.work_dir, f'shard_rank{runner.rank}.pth'))


# --- helpers ---
UNSHARDED = "dict(type='OLORAdamW', lr=0.01, weight_decay=0.01)"
ZERO = ("dict(type='ZeroRedundancyOptimizer', optimizer_type='OLORAdamW', "
        'lr=0.01, weight_decay=0.01)')


def write_pretrained(path):
    """A 'pre-trained' TinyOLORNet checkpoint, unlike any random init the
    runs make themselves (and the FlexibleRunner builds its model after the
    dataloader has drawn its seed, the Runner before: their random inits
    differ)."""
    torch.manual_seed(1)
    torch.save(dict(state_dict=TinyOLORNet().state_dict()), str(path))
    return str(path)


def tiny_config(path, optimizer, extra='', load_from=None,
                review='olor', l2sp=None):
    """A 4-iteration run of TinyOLORNet from ``load_from``, checkpoints
    every 2; the backbone rolls back (0.2 at the first tensor down to 0.05),
    the head does not. The lr schedule ends at 4 whatever max_iters is, so
    a run stopped at 2 and resumed ends where the 4-iteration run ends."""
    path.write_text(f'''
custom_imports = dict(imports=['mmolor', 'test_zero'],
                      allow_failed_imports=False)
default_scope = 'mmengine'
model = dict(type='TinyOLORNet')
load_from = {load_from!r}
train_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='TinyOLORData'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'))
train_cfg = dict(by_epoch=False, max_iters=4)
optim_wrapper = dict(
    constructor='OLOROptimWrapperConstructor',
    optimizer={optimizer},
    paramwise_cfg=dict(
        rollback=dict(max=0.2, min=0.05, power=1.0, layer='tensor',
                      review={review!r}),{f' l2sp={l2sp!r},' if l2sp else ''}
        bias_decay_mult=0.0))
param_scheduler = dict(type='LinearLR', start_factor=0.5, by_epoch=False,
                       begin=0, end=4)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='DumpOptimizerShardHook'),
                dict(type='OLORDriftHook', interval=1)]
randomness = dict(seed=0)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
{extra}''')
    return str(path)


def run(args, timeout=600, **env_extra):
    """Run a tool (``args``) from the repository root with one thread per
    process; its output, or a failed assertion with what killed it.

    A run one of whose workers gloo aborted (torchrun's summary: "Signal 6
    (SIGABRT)") is started once more, with a warning that says why: gloo's
    teardown on the CPU aborts a rank now and then (a race between ranks'
    connections, outside mmolor). A second abort, or any other failure,
    fails the test.
    """
    path = [TESTS, ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path),
               OMP_NUM_THREADS='1', **env_extra)
    for attempt in (1, 2):
        out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode == 0 or attempt == 2 or \
                'Signal 6 (SIGABRT)' not in out.stderr:
            break
        warnings.warn(f'{" ".join(map(str, args))}: a worker aborted '
                      f'(SIGABRT); started once more. Why:\n'
                      f'{why(out.stderr)}')
    assert out.returncode == 0, (why(out.stderr), out.stdout[-2000:],
                                 out.stderr[-6000:])
    return out.stdout + out.stderr


def why(stderr):
    """The lines of a failed run's stderr that say what killed it (first
    in the assertion message: a worker's abort is otherwise lost in the
    launcher's summary)."""
    keys = ('Error', 'error:', 'terminate called', 'what()', 'Signal',
            'Exception', 'Abort', 'abort', 'enforce')
    return '\n'.join(line for line in stderr.splitlines()
                     if any(k in line for k in keys))[-3000:]


def dist_train(config, work_dir, *extra):
    """``tools/dist_train.sh CONFIG 2``: two gloo processes (torchrun)."""
    return run(['bash', 'tools/dist_train.sh', config, '2', '--work-dir',
                str(work_dir), *extra],
               PORT=str(29500 + (os.getpid() + hash(str(work_dir))) % 1000),
               PYTHON=sys.executable)


def load(path):
    return torch.load(str(path), map_location='cpu', weights_only=False)


def param_names():
    """TinyOLORNet's parameters, in the order of the optimizer's groups
    (mmengine's constructor walks the modules as named_parameters does)."""
    return [n for n, _ in TinyOLORNet().named_parameters()]


def by_name(optimizer_state):
    """An index-keyed optimizer state dict, by parameter name."""
    index_to_name = {}
    for group in optimizer_state['param_groups']:
        for index in group['params']:
            index_to_name[index] = param_names()[index]
    return {index_to_name[i]: s for i, s in optimizer_state['state'].items()}


def assert_same_state(state_a, state_b, names):
    """Two by-name optimizer states hold the same tensors, bit for bit."""
    for name in names:
        assert state_a[name].keys() == state_b[name].keys(), name
        for key, value in state_a[name].items():
            assert torch.equal(value, state_b[name][key]), (name, key)


BACKBONE = [n for n in param_names() if n.startswith('backbone.')]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    return write_pretrained(tmp_path_factory.mktemp('pretrained') / 'p.pth')


@pytest.fixture(scope='module')
def unsharded(tmp_path_factory, pretrained):
    """The reference: plain OLORAdamW under DDP, 4 iterations."""
    root = tmp_path_factory.mktemp('unsharded')
    config = tiny_config(root / 'cfg.py', UNSHARDED, load_from=pretrained)
    log = dist_train(config, root / 'work')
    (root / 'work' / 'log.txt').write_text(log)
    return root / 'work'


def drift_lines(log):
    """OLORDriftHook's lines (drift and kappa of every stage), without
    the logger's prefix."""
    return re.findall(r'OLOR drift .*', log)


def assert_anchors_are_pretrained(anchors, pretrained):
    """The anchors (by name) are the loaded weights, and every backbone
    parameter has one."""
    weights = torch.load(pretrained, weights_only=False)['state_dict']
    assert set(anchors) == set(BACKBONE)
    for name, anchor in anchors.items():
        assert torch.equal(anchor, weights[name]), name


@pytest.mark.slow
def test_zero_config_form_shards_anchors_and_matches_unsharded(
        unsharded, pretrained, tmp_path):
    """mmengine's config form: each rank's local OLORAdamW keeps the
    anchors of its shard only, the two shards together hold every
    rolling-back parameter once, the weights and all optimizer states
    equal the unsharded run's, and rank 0's checkpoint holds every
    anchor."""
    config = tiny_config(tmp_path / 'cfg.py', ZERO, load_from=pretrained)
    log = dist_train(config, tmp_path / 'work')
    assert 'gloo' in log and 'OLOR rollback:' in log
    # OLORDriftHook reads each rank's local optimizer: the same drift and
    # kappa as the unsharded run, kappa > 0 in every stage.
    lines = drift_lines(log)
    assert len(lines) == 4
    assert lines == drift_lines((unsharded / 'log.txt').read_text())
    kappas = [float(k) for k in re.findall(r'\(kappa ([0-9.e+-]+)\)',
                                           ' '.join(lines))]
    assert kappas and all(k > 0 for k in kappas)

    shards = [load(tmp_path / 'work' / f'shard_rank{r}.pth') for r in (0, 1)]
    ref = load(unsharded / 'shard_rank0.pth')
    ref_rollback = {n: g['rollback'] for g in ref['groups']
                    for n in g['params']}
    for shard in shards:
        assert shard['optimizer'] == 'ZeroRedundancyOptimizer'
        assert shard['local'] == 'OLORAdamW'
        assert shard['anchors'], 'a rank without anchors: nothing sharded'
        # The constructor's per-group keys reached the local optimizer.
        for group in shard['groups']:
            for name in group['params']:
                assert group['rollback'] == ref_rollback[name], name
    anchored = [set(s['anchors']) for s in shards]
    assert not anchored[0] & anchored[1]
    assert anchored[0] | anchored[1] == set(BACKBONE)
    for shard in shards:
        for name, anchor in shard['anchors'].items():
            assert torch.equal(anchor, ref['anchors'][name]), name

    zero = load(tmp_path / 'work' / 'iter_4.pth')
    plain = load(unsharded / 'iter_4.pth')
    assert zero['state_dict'].keys() == plain['state_dict'].keys()
    for key, value in zero['state_dict'].items():
        assert torch.equal(value, plain['state_dict'][key]), key
    zero_state, plain_state = (by_name(zero['optimizer']),
                               by_name(plain['optimizer']))
    assert zero_state.keys() == plain_state.keys() == set(param_names())
    assert all('anchor' in zero_state[n] for n in BACKBONE)
    assert not any('anchor' in zero_state[n] for n in param_names()
                   if n not in BACKBONE)
    assert_same_state(zero_state, plain_state, param_names())
    assert_anchors_are_pretrained(
        {n: s['anchor'] for n, s in zero_state.items() if 'anchor' in s},
        pretrained)


@pytest.mark.slow
def test_zero_with_spd_review_and_l2sp_matches_unsharded(
        pretrained, tmp_path):
    """The review 'spd' (per-tensor norms and condition) and L2-SP under
    ZeRO: each rank holds whole tensors, so the weights and every optimizer
    state equal the unsharded run's, bit for bit."""
    options = dict(review='spd', l2sp=dict(alpha=0.5))
    ends = {}
    for name, optimizer in (('zero', ZERO), ('plain', UNSHARDED)):
        config = tiny_config(tmp_path / f'{name}.py', optimizer,
                             load_from=pretrained, **options)
        log = dist_train(config, tmp_path / name)
        assert "review='spd'" in log and 'OLOR L2-SP: alpha=0.5' in log
        ends[name] = load(tmp_path / name / 'iter_4.pth')
    for key, value in ends['zero']['state_dict'].items():
        assert torch.equal(value, ends['plain']['state_dict'][key]), key
    zero_state, plain_state = (by_name(ends['zero']['optimizer']),
                               by_name(ends['plain']['optimizer']))
    assert_same_state(zero_state, plain_state, param_names())
    groups = ends['zero']['optimizer']['param_groups']
    assert {g['review'] for g in groups} == {'spd'}
    assert {g['l2sp'] for g in groups} == {0.5, 0.0}
    # The review moved the weights: not the plain 'olor' run's.
    olor = tiny_config(tmp_path / 'olor.py', UNSHARDED, load_from=pretrained,
                       l2sp=dict(alpha=0.5))
    dist_train(olor, tmp_path / 'olor')
    olor_end = load(tmp_path / 'olor' / 'iter_4.pth')['state_dict']
    assert any(not torch.equal(v, olor_end[k])
               for k, v in ends['plain']['state_dict'].items())


@pytest.mark.slow
def test_zero_resume_is_bit_exact(pretrained, tmp_path):
    """2 iterations, then ``--resume`` to 4, ends where 4 at once ends:
    weights and every optimizer state (each rank reloads its shard, with
    its anchors, from the consolidated checkpoint)."""
    config = tiny_config(tmp_path / 'cfg.py', ZERO, load_from=pretrained)
    dist_train(config, tmp_path / 'full')
    dist_train(config, tmp_path / 'part', '--cfg-options',
               'train_cfg.max_iters=2')
    log = dist_train(config, tmp_path / 'part', '--resume')
    assert 'resumed' in log.lower()
    full, part = (load(tmp_path / d / 'iter_4.pth') for d in ('full', 'part'))
    assert part['meta']['iter'] == 4
    for key, value in full['state_dict'].items():
        assert torch.equal(value, part['state_dict'][key]), key
    assert full['optimizer']['param_groups'] == \
        part['optimizer']['param_groups']
    assert_same_state(
        by_name(full['optimizer']), by_name(part['optimizer']),
        param_names())
    # After the resume, each rank's local optimizer held its own shard of
    # the anchors again, not re-taken ones: they equal the first run's.
    shards = [load(tmp_path / 'part' / f'shard_rank{r}.pth') for r in (0, 1)]
    first = load(tmp_path / 'full' / 'iter_2.pth')
    first_anchors = {n: s['anchor'] for n, s in
                     by_name(first['optimizer']).items() if 'anchor' in s}
    assert set(shards[0]['anchors']) | set(shards[1]['anchors']) == \
        set(BACKBONE)
    for shard in shards:
        for name, anchor in shard['anchors'].items():
            assert torch.equal(anchor, first_anchors[name]), name


@pytest.mark.slow
def test_zero_under_the_flexible_runner(unsharded, pretrained, tmp_path):
    """``runner_type='FlexibleRunner'`` with its default ``DDPStrategy``
    (``device_ids=None`` on the CPU, by mmolor) saves a ZeRO checkpoint
    with every anchor; the weights equal the unsharded run's."""
    config = tiny_config(tmp_path / 'cfg.py', ZERO,
                         "runner_type = 'FlexibleRunner'\n",
                         load_from=pretrained)
    log = dist_train(config, tmp_path / 'work')
    assert 'DDPStrategy' in log
    zero = load(tmp_path / 'work' / 'iter_4.pth')
    plain = load(unsharded / 'iter_4.pth')
    # The strategy saves the wrapped model's state dict: `module.` keys.
    weights = {k.replace('module.', '', 1): v
               for k, v in zero['state_dict'].items()}
    assert weights.keys() == plain['state_dict'].keys()
    for key, value in plain['state_dict'].items():
        assert torch.equal(value, weights[key]), key
    assert_same_state(
        by_name(zero['optimizer']), by_name(plain['optimizer']),
        param_names())


@pytest.mark.slow
def test_zero_with_olor_sgd_through_a_shipped_config(tmp_path):
    """The config form on a real mmseg config (UPerNet R-50, OLOR-SGD) with
    ``tools/dist_train.sh``: the consolidated checkpoint holds an anchor
    for every rolling-back parameter and none for the others."""
    from test_e2e import gloo_upernet_config
    config = gloo_upernet_config(tmp_path, '''
optim_wrapper = dict(optimizer=dict(
    _delete_=True, type='ZeroRedundancyOptimizer', optimizer_type='OLORSGD',
    lr=0.01, momentum=0.9, weight_decay=0.0005))
''')
    dist_train(config, tmp_path / 'work')
    ckpt = load(tmp_path / 'work' / 'iter_2.pth')
    groups = ckpt['optimizer']['param_groups']
    rollback = {i: g['rollback'] for g in groups for i in g['params']}
    state = ckpt['optimizer']['state']
    assert len(rollback) > 100
    assert state.keys() == rollback.keys()  # every parameter stepped
    assert all(('anchor' in state[i]) == (r > 0) for i, r in rollback.items())
    assert sum(r > 0 for r in rollback.values()) > 100  # the backbone


def test_zero_refuses_a_non_olor_local_optimizer():
    """The constructor's check looks through ZeRO at its optimizer_type."""
    from mmengine.optim import build_optim_wrapper
    with pytest.raises(ValueError, match="optimizer_type='AdamW'"):
        build_optim_wrapper(
            TinyOLORNet(),
            dict(constructor='OLOROptimWrapperConstructor',
                 optimizer=dict(type='ZeroRedundancyOptimizer',
                                optimizer_type='AdamW', lr=0.01),
                 paramwise_cfg=dict(rollback=dict(max=0.1))))


def test_zero_resolves_registered_optimizer_types():
    # mmolor.compat's fixes apply once mmengine's runner is loaded, as in
    # every training process.
    import mmengine.runner  # noqa: F401
    from mmengine.registry import OPTIMIZERS
    from torch.distributed.optim import ZeroRedundancyOptimizer

    from mmolor.optim import OLORAdamW, OLORSGD
    from mmolor.compat.zero import local_optimizer_class
    assert local_optimizer_class('AdamW') is torch.optim.AdamW
    assert local_optimizer_class('OLORAdamW') is OLORAdamW
    assert local_optimizer_class(OLORSGD) is OLORSGD
    assert local_optimizer_class('NoSuchOptimizer') is None
    zero = OPTIMIZERS.get('ZeroRedundancyOptimizer')
    assert issubclass(zero, ZeroRedundancyOptimizer)
    with pytest.raises(KeyError, match='NoSuchOptimizer'):
        zero([nn.Parameter(torch.zeros(2))], optimizer_type='NoSuchOptimizer')


@pytest.mark.slow
def test_cpu_process_group_is_destroyed_at_exit(tmp_path):
    """The gloo group of ``prepare_dist`` is destroyed by an exit handler,
    while the interpreter is alive, not in its finalisation (where gloo's
    worker threads can abort the process). Exit handlers run last
    registered first: one registered before the group exists sees it gone."""
    script = tmp_path / 'exit.py'
    script.write_text(
        'import atexit, sys\n'
        'import torch, torch.distributed as dist\n'
        'from mmengine.config import Config\n'
        'from mmolor.compat.dist import prepare_dist\n'
        'atexit.register(lambda: print("initialized at exit:",\n'
        '                              dist.is_initialized()))\n'
        "cfg = Config(dict(launcher='pytorch'))\n"
        'print("backend:", prepare_dist(cfg))\n'
        'dist.all_reduce(torch.ones(1))\n')
    out = run([sys.executable, str(script)],
              RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
              MASTER_ADDR='127.0.0.1',
              MASTER_PORT=str(29500 + os.getpid() % 1000))
    assert 'backend: gloo' in out
    assert 'initialized at exit: False' in out
