"""Packaging for keras_autopruner.

The small real data sets under `keras_autopruner/data/` are listed in
`package_data` so that they ship inside the wheel: tests and examples must
run without downloading anything.
"""

from setuptools import find_packages
from setuptools import setup

setup(
    name="keras_autopruner",
    version="0.1.0",
    description=(
        "AutoPruner for Keras 3: learn which filters to remove, remove them, "
        "and export a smaller model."
    ),
    python_requires=">=3.9",
    packages=find_packages(
        exclude=["tests", "tests.*", "examples", "examples.*", "bench", "bench.*"]
    ),
    package_data={
        "keras_autopruner": [
            "data/*.npz",
            "data/*.csv.gz",
            "data/README.md",
            "data/LICENSE-*.txt",
        ],
    },
    include_package_data=True,
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "tensorflow-datasets",
        "absl-py",
        "numpy",
        "pandas",
        "matplotlib",
    ],
    extras_require={
        "baselines": ["tensorflow-model-optimization", "tf_keras"],
        "test": ["pytest", "hypothesis"],
        "deploy": ["onnx", "tf2onnx", "onnxruntime", "hls4ml"],
        # Quantisation-aware training with learned bit-widths (HGQ2, pure
        # Python, 125 kB), its bit-exact hls4ml conversion, and da4ml (the
        # compiler behind hls4ml's distributed-arithmetic strategy: LUT and
        # latency estimates without vendor tools), in the range hls4ml's
        # own `da` extra asks for.
        "fpga": ["hgq2", "hls4ml", "da4ml>=0.5.2,<0.6"],
        # Other Keras backends (KERAS_BACKEND=jax or torch). JAX's CPU build
        # comes from PyPI; for PyTorch pick the build for your machine
        # (PyPI's default Linux wheel carries CUDA).
        # Peer tools for bench/fpga_pquant.py only (`make peers`); the
        # package never imports them.
        "peers": ["pquant-ml==0.1.0"],
        "jax": ["jax"],
        "torch": ["torch"],
    },
)
