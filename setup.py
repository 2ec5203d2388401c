# Copyright (c) mmolor contributors. All rights reserved.
import os.path as osp
import re

from setuptools import find_packages, setup


def read_version():
    with open(osp.join('mmolor', 'version.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


setup(
    name='mmolor',
    version=read_version(),
    description='OLOR (One Step Learning, One Step Review) optimizers and '
    'configs for mmdetection and mmsegmentation',
    long_description=open('README.md').read() if osp.exists('README.md')
    else '',
    long_description_content_type='text/markdown',
    license='Apache License 2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['mmolor', 'mmolor.*']),
    # OLOR's fused CPU kernel, compiled on first use (mmolor/optim/
    # _cpu_kernel.py)
    package_data={'mmolor.optim': ['csrc/*.cpp']},
    # The ranges tested together (see mmolor/version.py, which checks them
    # at import). mmcv has no wheel on PyPI: `make install` builds it with
    # its ops before this package is installed.
    install_requires=[
        'torch>=2.1',
        'numpy<2',
        'mmengine>=0.10.0,<0.11.0',
        'mmcv>=2.0.0,<2.2.0',
        'mmdet>=3.3.0,<3.4.0',
        'mmsegmentation>=1.2.0,<1.3.0',
        'ftfy',  # imported by mmseg, not declared by it
        'regex',
    ],
    extras_require={
        'tests': ['pytest>=7'],
        # the demo and the forgetting benchmark: bundled digits, plots
        'demo': ['scikit-learn', 'matplotlib'],
    },
)
