# Copyright (c) mmolor contributors. All rights reserved.
"""mmengine's ``ZeroRedundancyOptimizer`` config form, for any optimizer.

mmengine documents ZeRO (torch's ``ZeroRedundancyOptimizer``: each rank
keeps the optimizer state of its own shard of the parameters) as::

    optim_wrapper = dict(optimizer=dict(
        type='ZeroRedundancyOptimizer', optimizer_type='AdamW', lr=1e-4))

but mmengine 0.10.7 resolves ``optimizer_type`` with
``getattr(torch.optim, optimizer_type)``, so only torch's own optimizers
can be sharded that way: ``optimizer_type='OLORAdamW'`` dies with
``AttributeError: module 'torch.optim' has no attribute 'OLORAdamW'``.
torch's ZeRO itself takes any optimizer class (with OLOR, each rank's
local optimizer keeps the anchors of its shard only).

The class below replaces mmengine's ``ZeroRedundancyOptimizer`` entry in
mmengine's root ``OPTIMIZERS`` registry (same name, ``force=True``, by
:func:`patch_zero`) with a subclass that looks ``optimizer_type`` up in
``torch.optim`` first, as mmengine does, and otherwise in the ``OPTIMIZERS``
registry (under the current default scope, like every other optimizer
``type``): ``OLORAdamW``, ``OLORAdam``, ``OLORSGD`` and any registered
optimizer work.

Checkpoints. ZeRO's ``state_dict()`` gathers every rank's shard onto rank
0, a collective that every rank must join, but mmengine 0.10.7's
``Runner.save_checkpoint`` (and ``DDPStrategy.save_checkpoint``, the
FlexibleRunner's) is ``@master_only``: rank 0 waits in the gather while the
other ranks train on, and the first checkpoint hangs the run (seen: two
gloo processes, ``CheckpointHook`` at iteration 2). :func:`patch_zero`
wraps those two methods so that, when the optim wrapper holds a ZeRO
optimizer, every rank first joins the gather; rank 0 then saves as before,
and its ``state_dict()`` uses the gathered shards, so the checkpoint holds
every anchor. On resume each rank loads its own shard, anchors included,
from that file (torch's ``load_state_dict``). Nothing changes for other
optimizers.
"""
import functools
import inspect
import sys
from typing import Any, Callable, Dict, Type, Union

from mmengine.dist import is_distributed, is_main_process
from mmengine.optim import OptimWrapperDict
from mmengine.optim import ZeroRedundancyOptimizer as _MMEngineZeRO
from mmengine.registry import OPTIMIZERS
from torch.distributed.rpc import is_available
from torch.optim import Optimizer

from ..optim import local_optimizer_class
from . import patch_from

__all__ = ['ZeroRedundancyOptimizer', 'local_optimizer_class', 'patch_zero']


class ZeroRedundancyOptimizer(_MMEngineZeRO):
    """mmengine's ``ZeroRedundancyOptimizer``, for registered optimizers.

    As :class:`mmengine.optim.ZeroRedundancyOptimizer` (torch's
    :class:`~torch.distributed.optim.ZeroRedundancyOptimizer` built from a
    type name, whose ``state_dict()`` consolidates the shards on rank 0 and
    must be called on every rank), except that ``optimizer_type`` may name
    any optimizer in the ``OPTIMIZERS`` registry, not only ``torch.optim``'s,
    or be the class itself.

    torch's ZeRO hands each param group (all its keys, e.g. OLOR's
    ``rollback``) to every rank's local optimizer, with that rank's share of
    the group's parameters, and keeps the keys of both in sync at each step
    (so ParamSchedulers reach the local optimizer).

    Example:
        >>> optim_wrapper = dict(
        >>>     constructor='OLOROptimWrapperConstructor',
        >>>     optimizer=dict(type='ZeroRedundancyOptimizer',
        >>>                    optimizer_type='OLORAdamW', lr=1e-4,
        >>>                    weight_decay=0.05),
        >>>     paramwise_cfg=dict(rollback=dict(max=0.01)))

    Args:
        params (Iterable): Parameters or param groups, sharded across ranks.
        optimizer_type (str | type): The local optimizer: a ``torch.optim``
            name, a registered name (``'OLORAdamW'``), or a class.
        **kwargs: torch's ``ZeroRedundancyOptimizer`` arguments
            (``process_group``, ``parameters_as_bucket_view``, ...) and the
            local optimizer's (``lr``, ``rollback``, ...).
    """

    def __init__(self, params: Any, optimizer_type: Union[str,
                                                          Type[Optimizer]],
                 **kwargs: Any) -> None:
        optimizer_cls = local_optimizer_class(optimizer_type)
        if optimizer_cls is None:
            raise KeyError(
                f'ZeroRedundancyOptimizer: optimizer_type={optimizer_type!r} '
                'is neither in torch.optim nor in the OPTIMIZERS registry')
        # mmengine's own checks, kept: its __init__ cannot be called, as it
        # would look optimizer_type up in torch.optim only.
        if not is_available():
            raise RuntimeError('torch.distributed.rpc is not available, which '
                               'ZeroRedundancyOptimizer needs.')
        # torch's ZeroRedundancyOptimizer.__init__, skipping mmengine's.
        super(_MMEngineZeRO, self).__init__(params, optimizer_cls, **kwargs)
        # Whether rank 0 holds every rank's current shard (see state_dict).
        self._gathered = False

    def step(self, *args: Any, **kwargs: Any) -> Any:
        self._gathered = False
        return super().step(*args, **kwargs)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._gathered = False
        super().load_state_dict(state_dict)

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard on rank ``to``; call it on every rank.

        Args:
            to (int): The rank that receives the shards. Defaults to 0.
        """
        super().consolidate_state_dict(to)
        self._gathered = True

    def state_dict(self) -> Dict[str, Any]:
        """The whole optimizer state on rank 0 (an empty dict elsewhere).

        Gathers the shards first, a collective of every rank, unless they
        were gathered since the last step (as mmolor's wrapped
        ``save_checkpoint`` does on every rank before rank 0 saves).
        """
        if not self._gathered:
            self.consolidate_state_dict()
        return super(_MMEngineZeRO, self).state_dict() \
            if is_main_process() else dict()


def _gather_zero_shards(optim_wrapper: Any) -> None:
    """Join the gather of every ZeRO optimizer in ``optim_wrapper``."""
    if isinstance(optim_wrapper, OptimWrapperDict):
        wrappers = list(optim_wrapper.values())
    else:
        wrappers = [optim_wrapper]
    for wrapper in wrappers:
        optimizer = getattr(wrapper, 'optimizer', None)
        if isinstance(optimizer, ZeroRedundancyOptimizer):
            optimizer.consolidate_state_dict()


def _on_every_rank_first(save_checkpoint: Callable) -> Callable:
    """Wrap a ``@master_only`` ``save_checkpoint(self, ...)`` so that every
    rank joins the ZeRO gather of ``self.optim_wrapper`` before it runs."""
    signature = inspect.signature(save_checkpoint)

    @functools.wraps(save_checkpoint)
    def wrapper(self, *args, **kwargs):
        saves_optimizer = signature.bind(self, *args, **kwargs).arguments.get(
            'save_optimizer', True)
        if saves_optimizer and is_distributed():
            _gather_zero_shards(getattr(self, 'optim_wrapper', None))
        return save_checkpoint(self, *args, **kwargs)

    wrapper._mmolor_gathers_zero = True  # type: ignore[attr-defined]
    return wrapper


def patch_zero() -> None:
    """Register :class:`ZeroRedundancyOptimizer` under mmengine's name and
    make ``Runner.save_checkpoint`` / ``DDPStrategy.save_checkpoint`` gather
    ZeRO's shards on every rank first (see the module docstring). Calling it
    again does nothing."""
    from mmengine._strategy import DDPStrategy
    from mmengine.runner import Runner
    OPTIMIZERS.register_module(
        name='ZeroRedundancyOptimizer',
        module=ZeroRedundancyOptimizer,
        force=True)
    for owner in (Runner, DDPStrategy):
        method = owner.__dict__['save_checkpoint']
        if not getattr(method, '_mmolor_gathers_zero', False):
            owner.save_checkpoint = _on_every_rank_first(method)


patch_from(sys.modules[__name__])
