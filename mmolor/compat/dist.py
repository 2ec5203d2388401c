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

``runner_type='FlexibleRunner'`` takes its wrapper from ``cfg.strategy``:
:func:`prepare_dist` gives a ``DDPStrategy`` (the FlexibleRunner's default)
``device_ids=None`` there too, and :func:`patch_fsdp` replaces
mmengine's ``FSDPStrategy`` with :class:`FSDPStrategy`, which fixes what
mmengine 0.10.7's FSDP strategy gets wrong on current torch and on the CPU
(see its docstring).
"""
import atexit
import contextlib
import copy
import dataclasses
import datetime
import logging
import os
import subprocess
import sys
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from mmengine._strategy import DDPStrategy
from mmengine._strategy.fsdp import FSDPStrategy as _MMEngineFSDPStrategy
from mmengine.config import Config
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)
from mmengine.logging import print_log
from mmengine.registry import (MODEL_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS,
                               STRATEGIES)
from torch.distributed.fsdp import CPUOffload, FullOptimStateDictConfig
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.nn.parallel import DistributedDataParallel

from ..optim import OLOROptimWrapperConstructor
from . import patch_from

__all__ = [
    'has_accelerator', 'init_cpu_dist', 'prepare_dist', 'FSDPStrategy',
    'patch_fsdp'
]

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
    The group is destroyed at exit (see :func:`_destroy_process_group`).

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
    atexit.register(_destroy_process_group)


# How long a rank waits at exit for the others (seconds): past it, the
# others are not coming (a rank that failed mid-run) and it exits anyway.
EXIT_BARRIER_S = 60


def _destroy_process_group() -> None:
    """Meet the other ranks, then destroy the default process group while
    the interpreter is alive.

    Left to interpreter finalisation, gloo's worker threads may still hold
    work objects with tensors; freeing them there takes the GIL of an
    interpreter being torn down and aborts the process (SIGABRT), now and
    then, after a run that finished. Neither mmengine nor torch destroys
    the group at exit. And a rank that closes its connections while another
    still uses its own makes gloo abort that one ("Connection closed by
    peer"), so the ranks first meet in a barrier that gives up after
    :data:`EXIT_BARRIER_S` (a rank that failed mid-run leaves the others in
    a collective: they never come).
    """
    if not torch_dist.is_initialized():
        return
    with contextlib.suppress(RuntimeError):
        torch_dist.monitored_barrier(
            timeout=datetime.timedelta(seconds=EXIT_BARRIER_S))
    torch_dist.destroy_process_group()


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
    return _without_device_ids(wrapper_cfg)


def _without_device_ids(wrapper_cfg: dict) -> Optional[dict]:
    """A copy of a DDP wrapper config with ``device_ids=None``; None when
    the wrapper is not a ``DistributedDataParallel``."""
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


def _is_flexible(cfg: Config) -> bool:
    """Whether ``cfg`` builds mmengine's ``FlexibleRunner`` (or a subclass),
    which takes its model wrapper from ``cfg.strategy``."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import FlexibleRunner
    runner_type = cfg.get('runner_type', None)
    if isinstance(runner_type, str):
        with RUNNERS.switch_scope_and_registry(None) as registry:
            runner_type = registry.get(runner_type)
    return isinstance(runner_type, type) and issubclass(
        runner_type, FlexibleRunner)


def _cpu_ddp_strategy_cfg(cfg: Config) -> None:
    """Give a FlexibleRunner's ``DDPStrategy`` ``device_ids=None``.

    The FlexibleRunner builds a ``DDPStrategy`` when ``cfg.strategy`` is
    None and the launch is distributed; like the Runner, it then passes
    ``device_ids=[LOCAL_RANK]``, which a CPU module refuses. Other
    strategies are left alone.
    """
    if not _is_flexible(cfg):
        return
    strategy = cfg.get('strategy', None)
    if strategy is None:
        strategy = dict(type='DDPStrategy')
    strategy_type = strategy.get('type', None)
    if isinstance(strategy_type, str):
        with STRATEGIES.switch_scope_and_registry(None) as registry:
            strategy_type = registry.get(strategy_type)
    # FSDPStrategy is a DDPStrategy too, with a wrapper of its own.
    if not (isinstance(strategy_type, type)
            and issubclass(strategy_type, DDPStrategy)
            and not issubclass(strategy_type, _MMEngineFSDPStrategy)):
        return
    # DDPStrategy's own default wrapper when none is set.
    wrapper_cfg = _without_device_ids(
        strategy.get('model_wrapper', None)
        or dict(type='MMDistributedDataParallel', broadcast_buffers=False))
    if wrapper_cfg is not None:
        strategy = copy.deepcopy(strategy)
        strategy['model_wrapper'] = wrapper_cfg
        cfg.strategy = strategy


def _offloads_params(cpu_offload: Any) -> bool:
    """Whether an FSDP ``cpu_offload`` setting keeps parameters on the
    CPU (``True``, ``CPUOffload(offload_params=True)`` or its dict)."""
    if isinstance(cpu_offload, CPUOffload):
        return cpu_offload.offload_params
    if isinstance(cpu_offload, dict):
        return bool(cpu_offload.get('offload_params', False))
    return bool(cpu_offload)


@contextlib.contextmanager
def _uniform_anchors(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Give every parameter with state an anchor in its own dtype, for the
    time of FSDP's gather (see :class:`FSDPStrategy`, 4.), then undo it."""
    added, recast = [], {}
    for group in optimizer.param_groups:
        for p in group['params']:
            state = optimizer.state.get(p)
            if not state:
                continue
            anchor = state.get('anchor')
            if anchor is None:
                state['anchor'] = torch.zeros_like(p)
                added.append(p)
            elif anchor.dtype != p.dtype:
                recast[p] = anchor
                state['anchor'] = anchor.to(p.dtype)
    try:
        yield
    finally:
        for p in added:
            del optimizer.state[p]['anchor']
        for p, anchor in recast.items():
            optimizer.state[p]['anchor'] = anchor


class FSDPStrategy(_MMEngineFSDPStrategy):
    """mmengine's ``FSDPStrategy``, fixed for torch >= 2.1 and the CPU.

    Registered under mmengine's name (``force=True``) by :func:`patch_fsdp`,
    so that ``strategy=dict(type='FSDPStrategy', ...)`` of a
    ``runner_type='FlexibleRunner'`` config gets it. Three fixes, each
    needed by an FSDP run with OLOR on this stack:

    1. **Resume.** mmengine 0.10.7 calls
       ``FSDP.optim_state_dict_to_load(state_dict, model, optimizer)``:
       torch 2.0's argument order. torch >= 2.1 takes
       ``(model, optim, optim_state_dict)``, so every resume of an FSDP run
       fails; this class passes them by keyword, which both orders accept.
    2. **The CPU.** mmengine passes ``device_id=int(LOCAL_RANK)``, a GPU
       index, and torch's FSDP refuses ``device_id=None`` without an
       accelerator ("FSDP needs a non-CPU accelerator device"). On a
       machine without one, the wrapper gets
       ``device_id=torch.device('cpu')`` unless ``model_wrapper`` sets it.
    3. **Full optimizer state dicts of CPU states.** With
       ``FullOptimStateDictConfig(offload_to_cpu=True)`` (what
       ``state_dict_cfg='full'`` sets) torch only calls ``.cpu()`` on each
       gathered state instead of cloning it, and on the CPU that returns
       the all-gather buffer itself, which the next state key overwrites:
       the checkpoint then holds one key's values (``exp_avg_sq``) under
       every key (``exp_avg``, ``anchor``), silently. Seen with torch
       2.14.1, gloo, two CPU processes. Where the optimizer state is on
       the CPU (no accelerator, or ``cpu_offload`` of the parameters) this
       class uses ``offload_to_cpu=False``, which clones; the states are on
       the CPU already.
    4. **Anchors of some parameters only.** torch gathers the optimizer
       state of each flat parameter state key by state key, into one buffer
       of one dtype, and asserts ("Manually calculated
       _sharded_numel_padded is incorrect") unless every parameter with
       state holds every key: a flat parameter that holds a rolling-back
       backbone and a head with ``rollback=0`` (no anchor) cannot be saved,
       in ``'full'`` or ``'local'`` mode. :meth:`optim_state_dict` gives the
       others a zero anchor for the gather only (and a ``bfloat16`` anchor
       its parameter's dtype, losslessly) and removes those placeholder
       anchors from the result and from the optimizer: the checkpoint holds
       exactly OLOR's anchors, and loading it (per parameter) needs nothing.
    5. **Building OLOR's param groups.** The strategy builds the optimizer
       from the wrapped model, whose parameters are then 1-D views of this
       rank's shard (``use_orig_params=True``): the depth rule of
       ``layer='block'`` cannot run its forward pass (``RuntimeError:
       weight should have at least three dimensions``; it falls back to
       registration order, with a warning), and mmengine's
       ``flat_decay_mult`` would take every weight for a 1-D one. With
       ``OLOROptimWrapperConstructor`` this class builds the optimizer
       inside ``FSDP.summon_full_params(writeback=False)``, which keeps the
       parameter objects (the optimizer still steps the shards) but gives
       them their full shapes for the time of the build; that costs the
       full parameters once, on every rank.
    """

    def _wrap_model(self, model: torch.nn.Module) -> Any:
        wrapper_cfg = dict(self.model_wrapper
                           or dict(type='MMFullyShardedDataParallel'))
        if not has_accelerator():
            wrapper_cfg.setdefault('device_id', torch.device('cpu'))
        # A new dict: `self.model_wrapper` may be the config's own.
        self.model_wrapper = wrapper_cfg
        optim_cfg = self.optim_state_dict_config
        if (isinstance(optim_cfg, FullOptimStateDictConfig)
                and optim_cfg.offload_to_cpu and
            (not has_accelerator()
             or _offloads_params(wrapper_cfg.get('cpu_offload')))):
            self.optim_state_dict_config = dataclasses.replace(
                optim_cfg, offload_to_cpu=False)
        return super()._wrap_model(model)

    def build_optim_wrapper(self, optim_wrapper: Any,
                            model: Optional[torch.nn.Module] = None) -> Any:
        """mmengine's, with OLOR's constructor seeing full parameters (see
        5. above)."""
        constructor = optim_wrapper.get('constructor') if isinstance(
            optim_wrapper, dict) else None
        if isinstance(constructor, str):
            with OPTIM_WRAPPER_CONSTRUCTORS.switch_scope_and_registry(
                    None) as registry:
                constructor = registry.get(constructor)
        if isinstance(model, FSDP) and isinstance(constructor, type) and \
                issubclass(constructor, OLOROptimWrapperConstructor):
            with FSDP.summon_full_params(model, writeback=False):
                return super().build_optim_wrapper(optim_wrapper, model)
        return super().build_optim_wrapper(optim_wrapper, model)

    def optim_state_dict(self) -> dict:
        """The optimizer state dict, full or this rank's (``state_dict_cfg``),
        with OLOR's anchors exactly where the optimizer has them.

        A collective: every rank calls it (mmengine's ``save_checkpoint``
        of this strategy does).
        """
        optimizer = self.optim_wrapper.optimizer
        names = {
            p: name.replace('_fsdp_wrapped_module.', '').replace(
                '_checkpoint_wrapped_module.', '')
            for name, p in self.model.named_parameters()
        }
        # Parameters with state but no anchor, and whether any rank holds
        # an anchor: every rank must take the same branch below.
        local = ({names[p]
                  for p, s in optimizer.state.items()
                  if s and 'anchor' not in s},
                 any('anchor' in s for s in optimizer.state.values()))
        gathered: List[Any] = [None] * torch_dist.get_world_size()
        torch_dist.all_gather_object(gathered, local)
        if not any(has_anchor for _, has_anchor in gathered):
            return super().optim_state_dict()
        with _uniform_anchors(optimizer):
            state_dict = super().optim_state_dict()
        state = state_dict.get('state', {})
        for fqn in set().union(*(without for without, _ in gathered)):
            state.get(fqn, {}).pop('anchor', None)
        return state_dict

    def load_optim_state_dict(self, state_dict: dict) -> None:
        """Load an optimizer state dict saved by :meth:`optim_state_dict`.

        Args:
            state_dict (dict): The optimizer state dict (full, or this
                rank's, as ``state_dict_cfg`` says).
        """
        optim_state_dict = FSDP.optim_state_dict_to_load(
            model=self.model,
            optim=self.optim_wrapper.optimizer,
            optim_state_dict=state_dict)
        self.optim_wrapper.load_state_dict(optim_state_dict)


def patch_fsdp() -> None:
    """Register :class:`FSDPStrategy` under mmengine's ``FSDPStrategy``."""
    STRATEGIES.register_module(
        name='FSDPStrategy', module=FSDPStrategy, force=True)


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
      ``device_ids=None`` (see :func:`_cpu_model_wrapper_cfg`);
    - for the ``FlexibleRunner``, does the same to a ``DDPStrategy``'s
      ``model_wrapper`` (see :func:`_cpu_ddp_strategy_cfg`; an
      ``FSDPStrategy`` needs nothing here, see :class:`FSDPStrategy`).

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
    _cpu_ddp_strategy_cfg(cfg)
    if cfg.get('sync_bn', None) is not None:
        print_log(
            f'sync_bn={cfg.sync_bn!r} is set, but SyncBatchNorm runs on GPUs '
            'only; expect it to fail on this CPU-only machine.',
            logger='current',
            level=logging.WARNING)
    return backend


patch_from(sys.modules[__name__])
