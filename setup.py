"""deepalign: deep (not shallow) alignment research in JAX/Flax."""

import setuptools

setuptools.setup(
    name="deepalign",
    version="0.1.0",
    description="RLHF at TPU scale, the measurements of shallow alignment, and the recovery penalty that fixes it.",
    packages=setuptools.find_packages(include=["deepalign", "deepalign.*", "launch", "launch.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=[
        # JAX 0.11 dropped Python 3.11 and flax 0.12.8 breaks on jax >= 0.11.1.
        "jax[cpu]>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.12,<0.3",
        "tensorflow-datasets>=4.9.9,<5",
        "array_record>=0.8",
        "importlib_resources>=6",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1",
        "safetensors>=0.5",
        "tokenizers>=0.21",
        "sentencepiece>=0.2",
        "jinja2>=3.1",
        "matplotlib>=3.9",
        "tensorboardX>=2.6",
        "numpy>=1.26",
        "chex>=0.1.90",
        "ml_dtypes>=0.5",  # bfloat16 safetensors
        "etils[epath]>=1.7",  # workdirs and TFDS data dirs (local or gs://)
        "pyarrow>=14",  # Parquet releases (PKU-SafeRLHF)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100"],
        # gs:// workdirs (etils.epath reaches Cloud Storage through fsspec's gcsfs;
        # tensorboardX's gs:// events need google-cloud-storage). launch/tpu.py installs it.
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14"],
        # Only to regenerate the committed reference fixtures and to run the
        # round-trip / speed comparisons against Hugging Face and TRL
        # (`python -m deepalign.benchmarks.compare`; never needed by tests).
        # torch stays pinned: 2.13.0 is the CPU build pip takes from this machine's disk.
        "hf": ["torch==2.13.0", "transformers>=4.50", "trl>=1.16,<2"],
    },
)
