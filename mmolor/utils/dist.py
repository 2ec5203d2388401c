# Copyright (c) mmolor contributors. All rights reserved.
"""Distributed launch on machines without an accelerator.

mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device`` for the
``pytorch``, ``slurm`` and ``mpi`` launchers whatever the backend, which
fails on a CPU-only torch, and ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to ``DistributedDataParallel``, which a CPU
module refuses. :func:`prepare_dist` works around both before the Runner is
built: on a machine without CUDA (or NPU, MLU, MUSA) it initialises a gloo
process group itself, which makes the Runner skip ``init_dist``, and asks
for ``MMDistributedDataParallel`` with ``device_ids=None``. With an
accelerator it changes nothing and mmengine does its usual NCCL set-up.
"""
import copy
import datetime
import logging
import os
import subprocess
from typing import Optional

import torch.distributed as torch_dist
import torch.multiprocessing as mp
from mmengine.config import Config
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.logging import print_log
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

__all__ = ['has_accelerator', 'init_cpu_dist', 'prepare_dist']

_LAUNCHERS = ('pytorch', 'slurm', 'mpi')
# The process-group backends that run on CPU tensors.
_CPU_BACKENDS = ('gloo', 'mpi')
_DEFAULT_PORT = '29500'  # torch.distributed's default


def has_accelerator() -> bool:
    """Whether mmengine's ``init_dist`` can set a device on this machine."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _set_slurm_env(port: Optional[int]) -> None:
    """Export torch's env:// variables from slurm's, as mmengine does."""
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    else:
        os.environ.setdefault('MASTER_PORT', _DEFAULT_PORT)
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    os.environ['WORLD_SIZE'] = str(ntasks)
    # mmengine falls back to `proc_id % torch.cuda.device_count()`, which
    # has no meaning (and divides by zero) without GPUs.
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    os.environ['RANK'] = str(proc_id)


def _set_mpi_env() -> None:
    """Export torch's env:// variables from Open MPI's, as mmengine does."""
    if 'MASTER_ADDR' not in os.environ:
        raise KeyError('The environment variable MASTER_ADDR is not set')
    os.environ.setdefault('MASTER_PORT', _DEFAULT_PORT)
    os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
    os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
    os.environ['LOCAL_RANK'] = os.environ['OMPI_COMM_WORLD_LOCAL_RANK']


def init_cpu_dist(launcher: str, backend: str = 'gloo', **kwargs) -> None:
    """Initialise the default process group without touching any device.

    The same environment handling as mmengine's ``init_dist`` (torchrun's
    ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; slurm's
    ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_NODELIST``; Open MPI's
    ``OMPI_COMM_WORLD_*``), minus its ``torch.cuda.set_device`` call.

    Args:
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        backend (str): A backend that works on CPU tensors. Defaults to
            ``'gloo'``.
        **kwargs: Passed to :func:`torch.distributed.init_process_group`,
            as ``env_cfg.dist_cfg`` is to mmengine's ``init_dist``.
            ``timeout`` is in seconds; ``port`` (slurm only) sets
            ``MASTER_PORT``.
    """
    if launcher not in _LAUNCHERS:
        raise ValueError(f'Invalid launcher type: {launcher}, expected one '
                         f'of {_LAUNCHERS}')
    timeout = kwargs.get('timeout', None)
    if timeout is not None and not isinstance(timeout, datetime.timedelta):
        try:
            kwargs['timeout'] = datetime.timedelta(seconds=timeout)
        except TypeError as error:
            raise TypeError(
                'Timeout for distributed training must be given in seconds, '
                f'but got {type(timeout)}. Please specify it like '
                "dist_cfg=dict(backend='gloo', timeout=1800)") from error
    port = kwargs.pop('port', None)
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    if launcher == 'slurm':
        _set_slurm_env(port)
    elif launcher == 'mpi':
        _set_mpi_env()
    torch_dist.init_process_group(
        backend=backend,
        rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        **kwargs)


def _cpu_model_wrapper_cfg(cfg: Config) -> Optional[dict]:
    """``cfg.model_wrapper_cfg`` with ``device_ids=None`` for a CPU module.

    Without a ``model_wrapper_cfg``, the Runner's own default is kept
    (``MMDistributedDataParallel``, ``broadcast_buffers=False``,
    ``find_unused_parameters`` from the config). Returns None when the
    configured wrapper is not a ``DistributedDataParallel``.
    """
    wrapper_cfg = cfg.get('model_wrapper_cfg', None)
    if wrapper_cfg is None:
        return dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg = copy.deepcopy(wrapper_cfg)
    wrapper_cfg.setdefault('type', 'MMDistributedDataParallel')
    wrapper_type = wrapper_cfg['type']
    if isinstance(wrapper_type, str):
        wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
    if not (isinstance(wrapper_type, type)
            and issubclass(wrapper_type, DistributedDataParallel)):
        return None
    wrapper_cfg['device_ids'] = None
    return wrapper_cfg


def prepare_dist(cfg: Config) -> Optional[str]:
    """Set up ``cfg.launcher``'s process group where mmengine cannot.

    Call it after ``cfg.launcher`` is set and before the Runner is built.
    Nothing happens when ``cfg.launcher`` is ``'none'`` or when the machine
    has an accelerator (mmengine then calls ``init_dist`` with
    ``cfg.env_cfg.dist_cfg``, NCCL by default). On a CPU-only machine it:

    - initialises the default process group with :func:`init_cpu_dist`,
      using ``cfg.env_cfg.dist_cfg`` (its ``backend`` becomes ``'gloo'``
      unless it is already a CPU backend, gloo or mpi), unless a process
      group already exists;
    - writes that backend back to ``cfg.env_cfg.dist_cfg.backend``;
    - sets ``cfg.model_wrapper_cfg`` to ``MMDistributedDataParallel`` with
      ``device_ids=None`` (see :func:`_cpu_model_wrapper_cfg`).

    Args:
        cfg (Config): The full config, with ``launcher`` set.

    Returns:
        str, optional: The CPU backend in use, or None if mmengine is left
        to set up the process group.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or has_accelerator():
        return None
    if cfg.get('env_cfg', None) is None:
        cfg.env_cfg = dict()
    if cfg.env_cfg.get('dist_cfg', None) is None:
        cfg.env_cfg.dist_cfg = dict()
    if torch_dist.is_initialized():
        # Set up by the caller: keep its backend, fix only the wrapper.
        backend = torch_dist.get_backend()
    else:
        dist_cfg = copy.deepcopy(cfg.env_cfg.dist_cfg)
        backend = dist_cfg.pop('backend', 'nccl')
        # mmengine's alternatives (deepspeed, colossalai) need GPUs.
        dist_cfg.pop('init_backend', None)
        if backend not in _CPU_BACKENDS:
            print_log(
                f'No GPU found: using the gloo backend instead of {backend} '
                f'for --launcher {launcher}.',
                logger='current',
                level=logging.INFO)
            backend = 'gloo'
        init_cpu_dist(launcher, backend=backend, **dist_cfg)
    cfg.env_cfg.dist_cfg.backend = backend

    wrapper_cfg = _cpu_model_wrapper_cfg(cfg)
    if wrapper_cfg is not None:
        cfg.model_wrapper_cfg = wrapper_cfg
    if cfg.get('sync_bn', None) is not None:
        print_log(
            f'sync_bn={cfg.sync_bn!r} is set, but SyncBatchNorm runs on GPUs '
            'only; expect it to fail on this CPU-only machine.',
            logger='current',
            level=logging.WARNING)
    return backend
