# Copyright (c) mmolor contributors. All rights reserved.
"""What mmolor's command-line tools share.

A quiet start (:func:`quiet_startup`, called before the heavy imports),
their common arguments (``--work-dir``, ``--cfg-options``, ``--launcher``,
``--trust-checkpoint``, ``--verbose``), the refusal of a missing file in
argparse's own format (:func:`check_file`), the config and runner set-up
of ``tools/train.py`` / ``tools/test.py`` and :func:`run_main`, which turns
a missing extra into one line. The heavy modules (mmengine's runner,
:mod:`mmolor.compat`) are imported where they are used.
"""
import argparse
import logging
import os
import os.path as osp
import sys
import warnings
from typing import Callable, Optional, Sequence

from mmengine.config import Config, DictAction

from ..version import MissingExtraError
from .setup_env import load_config, setup_scope

__all__ = [
    'quiet_startup', 'CfgOptionsAction', 'add_cfg_options', 'add_work_dir',
    'add_trust_checkpoint', 'add_launcher', 'add_verbose', 'add_runner_args',
    'parse_runner_args', 'check_file',
    'load_tool_config', 'set_local_rank', 'build_runner', 'run_main'
]

# The notices the libraries print when a tool starts, of no use to its user:
# (category, message regex).
STARTUP_WARNINGS = (
    # DeepSpeed's import (mmengine.runner imports it where it is installed).
    (FutureWarning, r'`torch\.jit\.\w+` is deprecated'),
    # mmengine's config loader, for `mmdet::` / `mmseg::` bases.
    (UserWarning, r'pkg_resources is deprecated'),
)


def _not_accelerator_notice(record: logging.LogRecord) -> bool:
    # DeepSpeed says which accelerator it detected, once, when imported.
    return record.module != 'real_accelerator'


def quiet_startup(argv: Optional[Sequence[str]] = None) -> bool:
    """Keep the libraries' start-up notices out of a tool's output.

    Ignores :data:`STARTUP_WARNINGS` and DeepSpeed's accelerator lines,
    unless ``--verbose`` is among the arguments. Call it before importing
    ``mmengine.runner`` (or anything that imports it).

    Args:
        argv (Sequence[str], optional): The arguments; defaults to
            ``sys.argv[1:]``.

    Returns:
        bool: Whether ``--verbose`` was given.
    """
    verbose = '--verbose' in (sys.argv[1:] if argv is None else argv)
    if not verbose:
        for category, message in STARTUP_WARNINGS:
            warnings.filterwarnings('ignore', message, category)
        logging.getLogger('DeepSpeed').addFilter(_not_accelerator_notice)
    return verbose


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction``, refusing an item that is not
    ``KEY=VALUE`` as argparse refuses a bad value (exit code 2)."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if '=' not in v]
        if bad:
            raise argparse.ArgumentError(
                self, f'invalid item {bad[0]!r} (expected KEY=VALUE)')
        super().__call__(parser, namespace, values, option_string)


def add_cfg_options(parser: argparse.ArgumentParser,
                    help: Optional[str] = None) -> None:
    """``--cfg-options KEY=VALUE ...``, merged into the config."""
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        metavar='KEY=VALUE',
        help=help or 'override some settings in the used config, the '
        'key-value pair in xxx=yyy format will be merged into config file. '
        'If the value to be overwritten is a list, it should be like '
        'key="[a,b]" or key=a,b It also allows nested list/tuple values, '
        'e.g. key="[(a,b),(c,d)]" Note that the quotation marks are '
        'necessary and that no white space is allowed.')


def add_work_dir(parser: argparse.ArgumentParser, help: str) -> None:
    """``--work-dir``."""
    parser.add_argument('--work-dir', help=help)


def add_trust_checkpoint(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint PATH`` (repeatable), for
    :func:`mmolor.compat.checkpoint.trust_checkpoints`."""
    parser.add_argument(
        '--trust-checkpoint',
        action='append',
        metavar='PATH',
        help='load this checkpoint even if torch refuses it with '
        'weights_only=True (which can run code from the file: only for files '
        'you trust); repeat for more files. Appends to '
        'MMOLOR_TRUSTED_CHECKPOINTS')


def add_launcher(parser: argparse.ArgumentParser, script: str) -> None:
    """``--launcher`` and the ``--local-rank`` that
    ``torch.distributed.launch`` passes (see :func:`set_local_rank`).

    Args:
        parser (ArgumentParser): The tool's parser.
        script (str): ``'train'`` or ``'test'``: the ``tools/dist_*.sh``
            and ``tools/slurm_*.sh`` scripts named in the help.
    """
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help=f'job launcher (pytorch for tools/dist_{script}.sh, slurm for '
        f'tools/slurm_{script}.sh); on machines without a GPU the gloo '
        'backend is used')
    # With torch >= 2.0, `torch.distributed.launch` passes `--local-rank`.
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        type=int,
        default=0,
        help='set by torch.distributed.launch; torchrun uses the LOCAL_RANK '
        'environment variable instead')


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: the libraries' start-up notices shown (see
    :func:`quiet_startup`)."""
    parser.add_argument(
        '--verbose',
        action='store_true',
        help='show the libraries\' start-up warnings and notices')


def add_runner_args(parser: argparse.ArgumentParser, script: str,
                    work_dir_help: str) -> None:
    """The arguments of ``tools/train.py`` and ``tools/test.py`` beside
    their own: ``--work-dir``, ``--trust-checkpoint``, ``--cfg-options``,
    ``--launcher`` / ``--local-rank`` and ``--verbose``.

    Args:
        parser (ArgumentParser): The tool's parser.
        script (str): ``'train'`` or ``'test'`` (see :func:`add_launcher`).
        work_dir_help (str): What ``--work-dir`` holds.
    """
    add_work_dir(parser, work_dir_help)
    add_trust_checkpoint(parser)
    add_cfg_options(parser)
    add_launcher(parser, script)
    add_verbose(parser)


def parse_runner_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a tool's arguments (:func:`add_runner_args`): ``LOCAL_RANK``
    set, the config refused unless it is a file (:func:`check_file`)."""
    args = parser.parse_args()
    set_local_rank(args)
    check_file(parser, 'config', args.config, config=True)
    return args


def check_file(parser: argparse.ArgumentParser,
               name: str,
               path: Optional[str],
               config: bool = False,
               url: bool = False) -> None:
    """``parser.error`` (exit code 2) unless ``path`` is a file.

    Args:
        parser (ArgumentParser): The tool's parser.
        name (str): The argument, as the message names it.
        path (str, optional): Its value; None passes.
        config (bool): A config: ``'mmdet::...'`` names one inside a
            package and passes. Defaults to False.
        url (bool): A checkpoint: a URL passes. Defaults to False.
    """
    if path is None or (config and '::' in path) or (url and '://' in path):
        return
    if not osp.isfile(path):
        parser.error(f'{name}: no such file {path!r}')
    if config and not path.endswith('.py'):
        parser.error(f'{name}: {path!r} is not a config (a .py file)')


def load_tool_config(config: str,
                     cfg_options: Optional[dict] = None,
                     work_dir: Optional[str] = None,
                     launcher: Optional[str] = None) -> Config:
    """A tool's config: ``--cfg-options`` merged, ``--launcher`` set and
    ``work_dir`` from ``--work-dir``, else the config's, else
    ``./work_dirs/<config file name>``.

    Args:
        config (str): The config file (or ``'mmdet::...'``).
        cfg_options (dict, optional): ``--cfg-options``.
        work_dir (str, optional): ``--work-dir``.
        launcher (str, optional): ``--launcher``; None leaves the config's.
    """
    cfg = load_config(config)
    if launcher is not None:
        cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    # work_dir: CLI > the config's > the config file's name
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config))[0])
    return cfg


def set_local_rank(args: argparse.Namespace) -> None:
    """``LOCAL_RANK`` from ``--local-rank`` (torch.distributed.launch),
    unless the environment has it (torchrun)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def build_runner(cfg: Config):
    """The runner of ``cfg``: its ``default_scope`` made current, the gloo
    process group and CPU model wrapper where there is no GPU, then
    ``Runner.from_cfg`` (or the config's ``runner_type``)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from ..compat.dist import prepare_dist
    setup_scope(cfg)
    prepare_dist(cfg)
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def run_main(main: Callable[[], object]) -> None:
    """Run a tool's ``main``; a missing extra ends it with one line."""
    try:
        main()
    except MissingExtraError as e:  # one line: the extra to install
        sys.exit(f'error: {e}')
