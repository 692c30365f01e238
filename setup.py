"""OverLoCK for OpenMMLab: the backbone, mmdet 3.x and mmseg 1.x adapters."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(HERE, 'overlock', '__init__.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def readme():
    with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
        return f.read()


setup(
    name='overlock-mm',
    version=version(),
    description='OverLoCK (CVPR 2025) backbone for PyTorch, timm, MMPretrain 1.x, '
    'MMDetection 3.x and MMSegmentation 1.x',
    long_description=readme(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(include=['overlock*', 'mmdet_overlock*',
                                    'mmseg_overlock*', 'mmpretrain_overlock*']),
    # Tested: torch 2.12.1 + torchvision 0.27.1, timm 1.0.x, mmengine 0.10.7,
    # mmcv 2.1.0 (built with ops), mmdet 3.3.0, mmsegmentation 1.2.2,
    # mmpretrain 1.2.0.
    install_requires=[
        'torch>=2.4,<2.14',  # torch.get_autocast_dtype(device)
        'torchvision>=0.19',
        'timm>=0.9.12,<2',
    ],
    extras_require={
        'mm': [
            'mmengine>=0.10.4,<0.11',
            'mmcv>=2.1.0,<2.2.0',
            'mmdet>=3.3.0,<3.4',
            'mmsegmentation>=1.2.2,<1.3',
            'mmpretrain>=1.2.0,<1.3',
            'ftfy',
            'regex',
            'pycocotools',
        ],
        # optional CUDA accelerators (same numbers without them)
        'natten': ['natten>=0.17,<0.18'],
        'igemm': ['depthwise_conv2d_implicit_gemm'],
        'tests': ['pytest>=7'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
