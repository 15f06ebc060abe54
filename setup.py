"""Install sd_keras (library + `sd-keras` CLI) and its export pipeline as `sd_keras.export`."""
from setuptools import setup

TF = ["tensorflow>=2.16", "ai-edge-litert>=2.3", "ai-edge-quantizer>=0.10"]
JAX = ["jax>=0.4.30"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2", "prometheus-client>=0.17",
         "fastapi-offline>=1.7"]  # Swagger UI and Redoc files: /docs works offline
# Upscaler parity oracle (tests/test_upscalers.py). Not in DEV: spandrel requires torchvision, and PyPI's
# torchvision wheels are built for PyPI's CUDA torch; beside the CPU torch build DEV uses, torchvision fails to
# import and takes transformers' CLIP down with it. Install it without dependencies (it needs only torch, einops,
# safetensors): pip install --no-deps "spandrel>=0.4.2" einops
PARITY = ["spandrel>=0.4.2", "einops"]
DATASET = ["webdataset>=0.2.90", "pyarrow>=14"]  # sd-keras dataset: tar shards, table reading, Parquet shards
RAY = ["ray[data]>=2.30"]  # sd-keras dataset --ray: Ray Data actor pools
DEV = TF + JAX + SERVE + DATASET + RAY + [
    "keras-cv==0.9.0",       # parity oracle (imports TensorFlow)
    "tf-keras",              # writes KerasCV's legacy h5 layout in tests
    "torch==2.13.0",         # CPU build; diffusers parity
    "diffusers>=0.30",
    "peft",                  # LoRA parity in tests
    "compel>=2.5",           # prompt-weighting oracle (A1111 syntax tests)
    "transformers>=4.40",    # reference CLIP tokenizer / text model
    "regex",                 # CLIP's reference split pattern in tokenizer tests
    "httpx",
    "selenium>=4.10",        # drives Debian's chromium in the web page test
    "datasets>=2.14",        # loads sd-keras dataset's --hf layout in tests (imagefolder)
    "nbformat>=5.9",
    "pytest>=8",
    "pytest-xdist>=3.5",     # the fast tier on every core: pytest tests -n 2
    "nbclient>=0.10",
    "nbmake>=1.5",           # pytest --nbmake notebooks/ runs them as written
    "ipykernel",
]

setup(
    name="sd_keras",
    version="0.1.0",
    description="Keras 3 Stable Diffusion: XLA-compiled sampling, LiteRT export, serving",
    python_requires=">=3.10",
    packages=[
        "sd_keras",
        "sd_keras.cli",
        "sd_keras.models",
        "sd_keras.schedulers",
        "sd_keras.weights",
        "sd_keras.data",
        "sd_keras.dataset",
        "sd_keras.server",
        "sd_keras.train",
        "sd_keras.export",
    ],
    package_dir={"sd_keras.export": "export"},
    package_data={"sd_keras": ["assets/*", "assets/**/*"], "sd_keras.server": ["static/*"],
                  "sd_keras.export": ["*.md"]},
    include_package_data=True,
    install_requires=[
        "keras>=3.8",
        "numpy>=1.24",
        "pillow>=9",
        "safetensors>=0.4",
        "omegaconf>=2.3",
        "h5py>=3.8",
        "tqdm>=4.60",
    ],
    extras_require={"tf": TF, "jax": JAX, "serve": SERVE, "dev": DEV, "dataset": DATASET, "ray": DATASET + RAY,
                    "parity": PARITY},
    entry_points={"console_scripts": ["sd-keras=sd_keras.cli:main"]},
)
