# Copyright (c) mmolor contributors. All rights reserved.
import os
import os.path as osp
import runpy
import sys

from setuptools import find_packages, setup


# mmolor/version.py is the one source of every version fact: mmolor's
# version, the requirements of the core and of each extra (it checks them at
# import too) and the versions `make install` installs; read without
# importing mmolor.
VERSION = runpy.run_path(osp.join('mmolor', 'version.py'))


def kernel_build():
    """``ext_modules`` and ``cmdclass`` for OLOR's fused CPU kernel.

    ``mmolor/optim/csrc/olor_cpu.cpp`` is compiled here, at install time,
    with torch's ``BuildExtension`` and OpenMP (mmcv builds its ops the same
    way), into ``mmolor.optim._olor_cpu``: training processes only import
    it. It needs torch at build time (``pip install --no-build-isolation``,
    as ``make install`` runs it) and a C++ compiler. ``MMOLOR_WITH_KERNEL``:
    ``0`` installs without the kernel, ``1`` fails the install if it cannot
    be built; unset, a failed build warns and installs without it. Without
    the kernel OLOR takes torch's step and then the review (the same
    update, one more pass over memory) and warns once.
    """
    mode = os.environ.get('MMOLOR_WITH_KERNEL', '')
    if mode == '0':
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        if mode == '1':
            raise
        print('mmolor: torch is not importable at build time, so OLOR\'s '
              'fused CPU kernel is not built (install torch first and use '
              'pip install --no-build-isolation)', file=sys.stderr)
        return [], {}

    class BuildKernel(BuildExtension):
        """torch's BuildExtension; a failed build warns unless
        MMOLOR_WITH_KERNEL=1 asks for the kernel."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # no compiler, no OpenMP, ...
                if mode == '1':
                    raise
                print(f'mmolor: could not build OLOR\'s fused CPU kernel '
                      f'({type(e).__name__}: {e}); installing without it '
                      '(MMOLOR_WITH_KERNEL=1 makes this an error)',
                      file=sys.stderr)
                # Nothing to copy in place or to package (a new list: the
                # build loop iterates over the old one).
                self.extensions = [x for x in self.extensions if x is not ext]

    kernel = CppExtension(
        'mmolor.optim._olor_cpu', ['mmolor/optim/csrc/olor_cpu.cpp'],
        # -fopenmp at compile and link time: ATen's parallel_for is inlined
        # from the headers and runs serially without it. The OpenMP runtime
        # linked (libgomp.so.1) is the one torch has already loaded.
        extra_compile_args=['-O3', '-fno-math-errno', '-fopenmp'],
        extra_link_args=['-fopenmp'])
    return [kernel], {'build_ext': BuildKernel}


EXT_MODULES, CMDCLASS = kernel_build()

setup(
    name='mmolor',
    version=VERSION['__version__'],
    description='OLOR (One Step Learning, One Step Review) optimizers and '
    'configs for mmdetection and mmsegmentation',
    long_description=open('README.md').read() if osp.exists('README.md')
    else '',
    long_description_content_type='text/markdown',
    license='Apache License 2.0',
    python_requires=VERSION['PYTHON_REQUIRES'],
    # Only the library: benchmarks/, tests/, tools/ and configs/ stay in the
    # checkout (tests/test_install.py).
    packages=find_packages(include=['mmolor', 'mmolor.*']),
    # OLOR's fused CPU kernel, compiled at install (see kernel_build); its
    # source ships for rebuilds.
    package_data={'mmolor.optim': ['csrc/*.cpp']},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    # The core (optimizers, constructor, drift hook, mmolor.compat): torch
    # and mmengine. The codebases are extras: `.[det]` (mmdet), `.[seg]`
    # (mmsegmentation), `.[cls]` (mmpretrain, timm), `.[all]`; and `.[tests]`,
    # `.[demo]`. mmcv has no wheel on PyPI: `make install` builds it with its
    # ops before this package is installed.
    install_requires=VERSION['install_requires'](),
    extras_require=VERSION['extras_require'](),
)
