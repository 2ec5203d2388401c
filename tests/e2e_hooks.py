# Copyright (c) mmolor contributors. All rights reserved.
"""A hook the end-to-end tests load with ``custom_imports``: every rank
saves its own weights at the end of training (checkpoints hold rank 0's)."""
import os.path as osp

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpRankWeightsHook(Hook):

    def after_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        params = {n: p.detach().cpu() for n, p in model.named_parameters()}
        torch.save(params, osp.join(runner.work_dir,
                                    f'weights_rank{runner.rank}.pth'))
