# Copyright (c) mmolor contributors. All rights reserved.
"""A checkpoint torch refuses is never unpickled unless the user trusts it.

The malicious files run code when unpickled (they create a marker file), so
every refusal checks that the marker does not exist, and every opt-in that
it does. The real checkpoint shapes are written by the real writers where
they can be (mmengine's Runner and ``save_checkpoint`` with a real
MessageHub) and by hand in the mmcv 1.x layout; each loads with
``weights_only=True`` and nothing else.
"""
import collections
import os
import os.path as osp
import pickle
import shlex
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import BaseMetric
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.model import BaseModel, BaseModule
from mmengine.runner import CheckpointLoader, Runner, save_checkpoint
from torch import nn

from mmolor.compat.checkpoint import (TRUST_ENV, UntrustedCheckpointError,
                                     load_from_local, trust_checkpoints)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(ROOT, 'tests')


class Payload:
    """What a malicious checkpoint holds: code that runs when unpickled."""

    def __init__(self, marker, kind='exec'):
        self.marker, self.kind = str(marker), kind

    def __reduce__(self):
        if self.kind == 'exec':
            return exec, (f"open({self.marker!r}, 'w').write('ran')", )
        return os.system, (f'touch {shlex.quote(self.marker)}', )


class HistoryBufferLookup:
    """A pickle that asks the allow-listed ``getattr`` for something else."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '_set_default_statistics')


def weights():
    return collections.OrderedDict([('backbone.weight',
                                     torch.arange(6.).view(2, 3)),
                                    ('backbone.bias', torch.zeros(2))])


def write_malicious(path, marker, kind='exec', checkpoint=None):
    """A checkpoint that looks real, with the payload hidden in its meta."""
    checkpoint = checkpoint or dict(
        meta=dict(epoch=1, iter=2), state_dict=weights())
    checkpoint['meta']['note'] = Payload(marker, kind)
    torch.save(checkpoint, str(path))
    return str(path)


@pytest.fixture(autouse=True)
def no_trust(monkeypatch):
    """Each test starts with nothing trusted."""
    for name in (TRUST_ENV, 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
                 'TORCH_FORCE_WEIGHTS_ONLY_LOAD'):
        # setenv first, so that what a test sets is undone after it
        monkeypatch.setenv(name, '')
        monkeypatch.delenv(name)


@pytest.fixture
def load_calls(monkeypatch):
    """The ``weights_only`` of every ``torch.load`` call (unset: None)."""
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, 'load', spy)
    return calls


# --- refused, and nothing runs ---------------------------------------------


@pytest.mark.parametrize('kind, refused', [('exec', 'builtins.exec'),
                                           ('system', 'posix.system')])
def test_refused_checkpoint_is_never_unpickled(tmp_path, kind, refused,
                                               load_calls):
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker, kind)
    with pytest.raises(UntrustedCheckpointError) as info:
        CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert not marker.exists()
    assert load_calls == [True]  # one restricted load, no second one
    error = info.value
    assert isinstance(error, pickle.UnpicklingError)
    assert (error.filename, error.refused) == (path, refused)
    message = str(error)
    for text in (path, refused, f'--trust-checkpoint {path}',
                 f'{TRUST_ENV}={path}', 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1',
                 'nothing in it has run'):
        assert text in message
    # The error survives being sent between processes (dist, dataloaders).
    assert str(pickle.loads(pickle.dumps(error))) == message


def test_allow_listed_getattr_resolves_only_history_buffer_methods(tmp_path):
    path = str(tmp_path / 'lookup.pth')
    torch.save(dict(meta=dict(x=HistoryBufferLookup())), path)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_from_local(path)
    assert info.value.refused is None
    assert "getattr(<class 'mmengine.logging.history_buffer.HistoryBuffer'>"\
        ", '_set_default_statistics') is not allowed" in str(info.value)


class Tiny(BaseModel):
    """A model whose ``backbone`` matches :func:`weights`."""

    def __init__(self, init_cfg=None):
        super().__init__()
        self.backbone = nn.Linear(3, 2)
        if init_cfg is not None:
            self.backbone = Backbone(init_cfg)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.backbone(torch.stack(inputs).float())
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return list(out)


class Backbone(BaseModule):
    """The parameters of :func:`weights` less their ``backbone.`` prefix."""

    def __init__(self, init_cfg):
        super().__init__(init_cfg=init_cfg)
        self.weight = nn.Parameter(torch.zeros(2, 3))
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


@pytest.mark.parametrize('resume', [False, True])
def test_load_from_and_resume_refuse_a_malicious_file(tmp_path, resume):
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker)
    runner = Runner(
        model=Tiny(),
        work_dir=str(tmp_path / 'work'),
        load_from=path,
        resume=resume,
        experiment_name=f'load_from_{resume}_{tmp_path.name}')
    with pytest.raises(UntrustedCheckpointError, match='evil.pth'):
        runner.load_or_resume()
    assert not marker.exists()


def test_init_cfg_pretrained_refuses_a_malicious_file(tmp_path):
    from mmdet.models.backbones import ResNet
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker)
    init_cfg = dict(type='Pretrained', checkpoint=path)
    with pytest.raises(UntrustedCheckpointError, match='evil.pth'):
        ResNet(depth=18, init_cfg=init_cfg).init_weights()
    assert not marker.exists()
    with pytest.raises(UntrustedCheckpointError, match='evil.pth'):
        Backbone(dict(init_cfg, prefix='backbone.')).init_weights()
    assert not marker.exists()


# --- loaded when the user says so --------------------------------------------


def test_trusted_file_loads_fully(tmp_path, monkeypatch, load_calls):
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker)
    other = write_malicious(tmp_path / 'other.pth', tmp_path / 'other-ran')
    # Trusting another file, or the folder, does not trust this one.
    for trusted in (other, str(tmp_path)):
        monkeypatch.setenv(TRUST_ENV, trusted)
        with pytest.raises(UntrustedCheckpointError):
            load_from_local(path)
    assert not marker.exists()
    monkeypatch.setenv(TRUST_ENV, os.pathsep.join([other, path]))
    model = Tiny(
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model.init_weights()
    assert marker.read_text() == 'ran'
    assert torch.equal(model.backbone.weight, weights()['backbone.weight'])
    assert load_calls[-1] is False
    assert not (tmp_path / 'other-ran').exists()


def test_trust_checkpoints_matches_by_real_path(tmp_path, monkeypatch):
    """What --trust-checkpoint does: a relative path, a symlink, ``~``."""
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker)
    os.symlink(path, str(tmp_path / 'link.pth'))
    monkeypatch.chdir(tmp_path)
    trust_checkpoints(['link.pth'])
    assert osp.isabs(os.environ[TRUST_ENV])
    assert os.environ[TRUST_ENV].endswith(f'{os.sep}link.pth')
    trust_checkpoints(None)  # no --trust-checkpoint: nothing changes
    monkeypatch.chdir(ROOT)
    checkpoint = CheckpointLoader.load_checkpoint(path)
    assert marker.exists() and checkpoint['meta']['iter'] == 2
    marker.unlink()
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv(TRUST_ENV, '~/evil.pth')
    CheckpointLoader.load_checkpoint(str(tmp_path / 'link.pth'))
    assert marker.exists()


def test_torch_force_no_weights_only_load_is_honoured(tmp_path, monkeypatch):
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with pytest.warns(UserWarning, match='TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'):
        CheckpointLoader.load_checkpoint(path)
    assert marker.exists()


def test_torch_force_weights_only_load_wins_over_trust(tmp_path, monkeypatch):
    marker = tmp_path / 'payload-ran'
    path = write_malicious(tmp_path / 'evil.pth', marker)
    monkeypatch.setenv(TRUST_ENV, path)
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(path)
    assert not marker.exists()


# --- the real checkpoint shapes load safely ----------------------------------


def dataset_metas():
    """``dataset_meta`` as mmdet, mmseg and mmpretrain datasets give it."""
    from mmdet.datasets import CocoDataset
    from mmpretrain.datasets import ImageNet
    from mmseg.datasets import ADE20KDataset
    seg = dict(ADE20KDataset.METAINFO, label_map=None, reduce_zero_label=True)
    return dict(
        mmdet=dict(CocoDataset.METAINFO),
        mmseg=seg,
        mmpretrain=dict(ImageNet.METAINFO))


class ToyDataset:
    """Eight samples and the ``metainfo`` of a real codebase's dataset."""

    def __init__(self, metainfo):
        self.metainfo = metainfo

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.full((3, ), float(index)))


class ToyMetric(BaseMetric):
    """Metrics of the kinds mmseg / mmpretrain evaluators return."""

    def process(self, data_batch, data_samples):
        self.results.append(len(data_samples))

    def compute_metrics(self, results):
        return dict(
            mIoU=np.round(np.nanmean(np.array([0.5, 0.25])) * 100, 2),
            count=np.int64(sum(results)),
            classwise=[0.1, 0.2],
            confusion=np.eye(2, dtype=np.int64))


def runner_kwargs(work_dir, metainfo, name):
    loader = dict(
        dataset=ToyDataset(metainfo),
        sampler=dict(type='DefaultSampler', shuffle=False),
        batch_size=2,
        collate_fn=pseudo_collate)
    return dict(
        model=Tiny(),
        work_dir=str(work_dir),
        train_dataloader=loader,
        val_dataloader=loader,
        val_evaluator=[ToyMetric()],
        train_cfg=dict(by_epoch=False, max_iters=4, val_interval=2),
        val_cfg=dict(),
        optim_wrapper=dict(
            optimizer=dict(type='OLORSGD', lr=0.1, momentum=0.9),
            constructor='OLOROptimWrapperConstructor',
            paramwise_cfg=dict(rollback=dict(max=0.01))),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=2),
            dict(type='MultiStepLR', milestones=[3], by_epoch=False)
        ],
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook',
                interval=2,
                by_epoch=False,
                save_best='mIoU',
                max_keep_ckpts=1),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='EMAHook')],
        randomness=dict(seed=0),
        experiment_name=name)


@pytest.mark.parametrize('codebase', ['mmdet', 'mmseg', 'mmpretrain'])
def test_runner_checkpoints_load_safely_and_resume(tmp_path, codebase,
                                                   load_calls):
    """Runner.save_checkpoint through CheckpointHook (last and best), with
    the codebase's dataset_meta, a message hub of HistoryBuffers and numpy
    values, OLOR's optimizer state, LinearLR + MultiStepLR (a Counter) and
    an EMA state dict."""
    metainfo = dataset_metas()[codebase]
    name = f'safety_{codebase}_{tmp_path.name}'
    Runner(**runner_kwargs(tmp_path, metainfo, name)).train()
    (best, ) = tmp_path.glob('best_mIoU_iter_*.pth')
    del load_calls[:]
    checkpoint = CheckpointLoader.load_checkpoint(str(tmp_path / 'iter_4.pth'))
    CheckpointLoader.load_checkpoint(str(best))
    assert load_calls == [True, True]
    meta = checkpoint['meta']
    assert meta['dataset_meta'] == metainfo
    assert isinstance(meta['dataset_meta']['classes'], tuple)
    assert {'cfg', 'seed', 'experiment_name', 'time',
            'mmengine_version'} <= meta.keys()
    hub = checkpoint['message_hub']
    assert isinstance(hub['log_scalars']['train/loss'], HistoryBuffer)
    assert isinstance(hub['runtime_info']['best_score'], np.float64)
    assert hub['runtime_info']['val/confusion'].dtype == np.int64
    milestones = checkpoint['param_schedulers'][1]['milestones']
    assert isinstance(milestones, collections.Counter)
    assert all('anchor' in s
               for s in checkpoint['optimizer']['state'].values())
    assert 'ema_state_dict' in checkpoint

    # and Runner.resume takes it, in a fresh runner
    kwargs = runner_kwargs(tmp_path / 'resumed', metainfo, name + '_resumed')
    kwargs['train_cfg']['max_iters'] = 5
    runner = Runner(
        **kwargs, resume=True, load_from=str(tmp_path / 'iter_4.pth'))
    runner.train()
    assert runner.iter == 5
    assert set(load_calls) == {True}


def test_save_checkpoint_with_a_real_message_hub(tmp_path, load_calls):
    """mmengine.runner.save_checkpoint of every numeric numpy kind a
    message hub can hold (scalars and arrays, numpy's pickles)."""
    hub = MessageHub.get_instance(f'safety_hub_{tmp_path.name}')
    hub.update_scalar('train/loss', torch.tensor(0.5))
    hub.update_scalar('train/lr', 0.01)
    hub.update_scalars({'val/acc': np.float32(0.75), 'val/n': np.int64(3)})
    info = dict(best_score=np.float64(41.5), eta=1.5, flag=np.bool_(True))
    for code in ('?', 'u1', 'i2', 'i4', 'i8', 'f2', 'f4', 'f8', 'c8', 'c16'):
        info[f'array_{code}'] = np.arange(4).astype(code).reshape(2, 2)
        info[f'scalar_{code}'] = np.ones(1, dtype=code)[0]
    hub.update_info_dict(info)
    path = str(tmp_path / 'hub.pth')
    save_checkpoint(
        dict(
            meta=dict(epoch=1, iter=8),
            message_hub=hub.state_dict(),
            state_dict=weights()), path)
    loaded = CheckpointLoader.load_checkpoint(path)
    assert load_calls == [True]
    runtime_info = loaded['message_hub']['runtime_info']
    for key, value in info.items():
        assert type(runtime_info[key]) is type(value), key
        assert np.array_equal(runtime_info[key], value), key
    loss = loaded['message_hub']['log_scalars']['train/loss']
    assert loss.current() == 0.5 and loss.mean() == 0.5
    fresh = MessageHub.get_instance(f'safety_hub_loaded_{tmp_path.name}')
    fresh.load_state_dict(loaded['message_hub'])
    assert fresh.get_scalar('val/acc').current() == pytest.approx(0.75)


def mmcv1_checkpoints():
    """The mmcv 1.x layout (mmdet 2.x, mmseg 0.x, mmcls 0.x), as
    mmcv.runner.save_checkpoint and EpochBasedRunner / IterBasedRunner
    wrote it: the state dict keeps torch's ``_metadata``."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    state_dict = collections.OrderedDict(
        (k, v.detach().clone()) for k, v in model.state_dict().items())
    state_dict._metadata = model.state_dict()._metadata
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model(torch.ones(1, 3, 5, 5)).sum().backward()
    optimizer.step()
    common = dict(
        mmcv_version='1.7.1',
        time=time.asctime(),
        env_info='sys.platform: linux\nPython: 3.8.13\nCUDA available: True',
        config="model = dict(type='FasterRCNN')\n",
        seed=0,
        exp_name='faster_rcnn_r50_fpn_1x_coco.py',
        epoch=12,
        iter=87936,
        hook_msgs=dict(last_ckpt='work_dirs/x/epoch_12.pth'))
    mmdet2 = dict(
        common,
        mmdet_version='2.28.2',
        CLASSES=('person', 'bicycle', 'car'),
        PALETTE=[(220, 20, 60), (119, 11, 32), (0, 0, 142)],
        hook_msgs=dict(
            common['hook_msgs'],
            best_score=0.374,
            best_ckpt='work_dirs/x/best_bbox_mAP_epoch_12.pth'))
    mmseg0 = dict(
        common,
        mmseg_version='0.30.0',
        CLASSES=('wall', 'building', 'sky'),
        PALETTE=[[120, 120, 120], [180, 120, 120], [6, 230, 230]],
        hook_msgs=dict(common['hook_msgs'], best_score=np.float64(0.4213)),
        fp16=dict(
            loss_scaler=dict(
                scale=512.0,
                growth_factor=2.0,
                backoff_factor=0.5,
                growth_interval=1000,
                _growth_tracker=0)))
    mmcls0 = dict(
        common, mmcls_version='0.25.0', CLASSES=['tench', 'goldfish'])
    return {
        name:
        dict(
            meta=meta, state_dict=state_dict, optimizer=optimizer.state_dict())
        for name, meta in (('mmdet2', mmdet2), ('mmseg0', mmseg0), ('mmcls0',
                                                                    mmcls0))
    }


@pytest.mark.parametrize('zipfile_format', [True, False])
@pytest.mark.parametrize('name', ['mmdet2', 'mmseg0', 'mmcls0'])
def test_mmcv1_checkpoints_load_safely(tmp_path, name, zipfile_format,
                                       load_calls):
    checkpoint = mmcv1_checkpoints()[name]
    path = str(tmp_path / f'{name}.pth')
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zipfile_format)
    loaded = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert load_calls == [True]
    assert pickle.dumps(loaded['meta']) == pickle.dumps(checkpoint['meta'])
    assert loaded['state_dict']._metadata == checkpoint['state_dict']._metadata
    assert loaded['state_dict'].keys() == checkpoint['state_dict'].keys()
    assert loaded['optimizer']['param_groups'] == \
        checkpoint['optimizer']['param_groups']


def test_plain_state_dict_and_numpy2_names_load_safely(tmp_path, load_calls):
    """A torchvision-style OrderedDict, and a message hub written under
    numpy 2 (``numpy._core.multiarray``) loaded under numpy 1 or 2."""
    path = str(tmp_path / 'plain.pth')
    torch.save(weights(), path)
    assert CheckpointLoader.load_checkpoint(path).keys() == weights().keys()
    buffer = HistoryBuffer()
    buffer.update(0.25)
    buffer_path = str(tmp_path / 'numpy.pth')
    torch.save(dict(buffer=buffer, best=np.float64(2.5)), buffer_path)
    numpy2_path = str(tmp_path / 'numpy2.pth')
    rename_in_pickle(buffer_path, numpy2_path, b'numpy.core.multiarray',
                     b'numpy._core.multiarray')
    loaded = CheckpointLoader.load_checkpoint(numpy2_path)
    assert loaded['best'] == 2.5 and loaded['buffer'].current() == 0.25
    assert load_calls == [True, True]


def rename_in_pickle(src, dst, old, new):
    """Copy a torch zip checkpoint, renaming a module in its pickle."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith('data.pkl'):
                assert old in data
                data = data.replace(old, new)
            zout.writestr(item, data)


# --- through tools/train.py and tools/test.py --------------------------------


def run_tool(*args, **env_extra):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([TESTS, ROOT]),
        OMP_NUM_THREADS='1',
        **env_extra)
    for name in (TRUST_ENV, 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'):
        env.pop(name, None)
    return subprocess.run([sys.executable, *args],
                          cwd=ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=900)


def ade_config(tmp_path, data_root):
    """The shipped UperNet config at 64x64, 2 iterations, no pretrain."""
    from test_e2e import UPERNET, ade_overrides, write_config
    return write_config(tmp_path / 'cfg.py', UPERNET,
                        ade_overrides(data_root, 2, deterministic=True))


@pytest.mark.slow
def test_tools_refuse_a_malicious_resume_until_trusted(tmp_path):
    """tools/train.py --resume: a real checkpoint with a payload added is
    refused, and loads (payload and all) with --trust-checkpoint;
    tools/test.py refuses it too when another file is trusted."""
    from benchmarks.datasets import write_ade20k
    data_root = tmp_path / 'ade'
    write_ade20k(str(data_root), dict(train=2, val=1), image_size=(64, 64))
    config = ade_config(tmp_path, data_root)
    work_dir = str(tmp_path / 'work')
    out = run_tool('tools/train.py', config, '--work-dir', work_dir)
    assert out.returncode == 0, out.stderr[-4000:]

    real = load_from_local(osp.join(work_dir, 'iter_2.pth'))  # loads safely
    marker = tmp_path / 'payload-ran'
    evil = write_malicious(tmp_path / 'evil.pth', marker, checkpoint=real)

    out = run_tool('tools/train.py', config, '--work-dir', work_dir,
                   '--resume', evil)
    assert out.returncode != 0
    assert 'UntrustedCheckpointError' in out.stderr, out.stderr[-4000:]
    assert f'--trust-checkpoint {evil}' in out.stderr
    assert 'builtins.exec' in out.stderr
    assert not marker.exists()

    out = run_tool('tools/test.py', config, evil, '--work-dir',
                   str(tmp_path / 'test'), '--trust-checkpoint',
                   osp.join(work_dir, 'iter_2.pth'))
    assert out.returncode != 0
    assert 'UntrustedCheckpointError' in out.stderr, out.stderr[-4000:]
    assert not marker.exists()

    out = run_tool('tools/train.py', config, '--work-dir', work_dir,
                   '--resume', evil, '--trust-checkpoint', evil,
                   '--cfg-options', 'train_cfg.max_iters=3')
    assert out.returncode == 0, out.stderr[-4000:]
    assert marker.read_text() == 'ran'
    assert 'resumed' in (out.stdout + out.stderr).lower()
    assert osp.isfile(osp.join(work_dir, 'iter_3.pth'))
