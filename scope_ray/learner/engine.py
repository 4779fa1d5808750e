"""Process set-up, torch.distributed initialisation and the DeepSpeed engine of one rank.

What compiles, and why the optimizer is a plain torch one: on CPU, DeepSpeed's
``init_distributed`` builds its shared-memory comm op (``deepspeed_shm_comm_op``, a C++
extension, ~35-90 s on a small machine the first time) whatever the optimizer. A
DeepSpeed optimizer ("AdamW" in the config) would build a second extension (cpu_adam /
fused_adam). We pass ``torch.optim.AdamW`` instead: nothing more to build, identical math
on CPU and GPU, and ZeRO still partitions its state (``zero_allow_untested_optimizer``).
The one unavoidable build is cached in ``TORCH_EXTENSIONS_DIR`` (see
:func:`configure_process_env`), so only the very first run on a machine pays for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from scope_ray.learner import lora
from scope_ray.learner.options import LearnerOptions

logger = logging.getLogger(__name__)


def default_extensions_dir() -> Path:
    root = os.environ.get("SCOPE_RAY_CACHE") or str(Path.home() / ".cache" / "scope-ray")
    return Path(root) / "torch_extensions"


def configure_process_env() -> None:
    """Call before ``import deepspeed`` in a learner process. Never overrides the user."""
    if not torch.cuda.is_available():
        # DeepSpeed would pick the CPU accelerator by itself, but warns while guessing.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # A stable cache folder: torch's default lives under /tmp and may be wiped, which
    # would make every run rebuild the comm op.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default_extensions_dir()))
    _prefer_own_ninja()


def _prefer_own_ninja() -> None:
    """Build with the ninja installed beside this interpreter (pip's ``ninja``, a
    DeepSpeed dependency) rather than whichever comes first on PATH. torch runs ``ninja``
    from PATH, and two versions hash the commands in the shared ``.ninja_log``
    differently, so a process whose PATH has the venv first (``ray job``, an activated
    venv) and one whose PATH does not (a Ray worker of a plain ``python``) rebuilt the
    comm op for each other every time (~25 s each, measured in the test suite)."""
    import shutil
    import sys

    own = Path(sys.executable).parent
    if (own / "ninja").is_file() and shutil.which("ninja") != str(own / "ninja"):
        os.environ["PATH"] = f"{own}{os.pathsep}{os.environ.get('PATH', '')}"


def dist_backend(options: LearnerOptions) -> str:
    return "nccl" if options.use_gpu and torch.cuda.is_available() else "gloo"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """torch.distributed through DeepSpeed, from the standard env variables.

    LOCAL_RANK is 0: Ray gives each learner actor its own GPU through
    CUDA_VISIBLE_DEVICES, so the only visible device is cuda:0.
    """
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
    )
    import deepspeed

    if backend == "nccl":
        torch.cuda.set_device(0)
    if is_loopback(master_addr):
        _init_on_loopback(rank, world_size, master_addr, master_port, backend)
    # Creates the process group from the env variables, or adopts the one made above.
    deepspeed.init_distributed(dist_backend=backend)
    logger.info("rank %d/%d joined %s group at %s:%d", rank, world_size, backend, master_addr, master_port)


def is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _init_on_loopback(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """The process group of a one-machine run (rank 0's Ray node address is loopback,
    so every rank is on this machine), reachable from this machine only.

    torch's env:// rendezvous starts rank 0's TCPStore on every interface; here rank 0
    binds the listening socket to loopback itself and hands it to the store. Gloo's and
    NCCL's own connections are pinned to the loopback interface the same way.
    """
    import socket

    # The timeout DeepSpeed itself gives the group (DEEPSPEED_TIMEOUT, 10 min).
    from deepspeed.constants import default_pg_timeout as timeout

    # Never overrides the user; read by gloo / NCCL when the group connects.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    listen_fd = None
    if rank == 0:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((master_addr, master_port))
        listener.listen(max(16, world_size))
        # The store's daemon thread polls this fd for the life of the group: hand it over
        # (detach), or the socket object closes it when this function returns, and the
        # daemon aborts the process ("Unexpected poll revent on the master's listening
        # socket: 32", POLLNVAL; seen on a resume in tests/faults/test_faults_driver.py).
        listen_fd = listener.detach()
    store = torch.distributed.TCPStore(
        master_addr, master_port, world_size, is_master=rank == 0, timeout=timeout,
        master_listen_fd=listen_fd, use_libuv=False,
    )
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)


def deepspeed_config(options: LearnerOptions) -> dict[str, Any]:
    """One optimizer step per ``train_step`` call; accumulation is driven by the caller
    (``set_gradient_accumulation_boundary``), so DeepSpeed's own GAS stays 1."""
    zero: dict[str, Any] = {"stage": options.zero_stage}
    if options.zero_stage == 3:
        # Gather full weights on save only through GatheredParameters, never implicitly.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    extra: dict[str, Any] = {}
    if options.dtype == "bfloat16":
        # Unset, DeepSpeed sums micro-batch gradients in bf16 (bench/grad_accum_precision.py).
        extra["data_types"] = {"grad_accum_dtype": "fp32" if options.grad_accum_dtype == "float32" else "bf16"}
    return {
        **extra,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(options.grad_clip),
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # check_grad_overflow: a non-finite gradient skips the step in bf16 too (fp32
        # ZeRO does it on a non-finite norm already).
        "bf16": {"enabled": options.dtype == "bfloat16", "check_grad_overflow": True},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def load_model(model_dir: str, options: LearnerOptions) -> torch.nn.Module:
    """The HF model with fp32 master weights, full on every rank.

    Under ZeRO-3, ``deepspeed.initialize`` partitions it afterwards. Loading straight
    into partitions (transformers' ``HfDeepSpeedConfig``) needs ``accelerate``, which is
    not a dependency; a full temporary copy per rank in host memory is fine for the
    paper's 1.5B-1.7B students.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(options.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if options.gradient_checkpointing:
        # Non-reentrant: works with inputs that need no grad (a LoRA student's frozen
        # embeddings too) and with ZeRO-3 hooks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if options.lora.enabled:
        model = lora.wrap(model, options.lora)  # after the seed: every rank draws the same A
    return model


def build_engine(model: torch.nn.Module, options: LearnerOptions, ds_config: dict[str, Any]):
    import deepspeed

    # Weight decay on every trained parameter, as verl (and so the authors' code) does.
    # Only those reach the optimizer: a LoRA student's state is its adapters' size.
    optimizer = torch.optim.AdamW(
        lora.trainable_parameters(model), lr=options.lr, betas=tuple(options.betas), eps=options.eps,
        weight_decay=options.weight_decay,
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    if options.lora.enabled:
        lora.checkpoint_adapters_only(engine)
    return engine


def quiet_deepspeed() -> None:
    """DeepSpeed logs every init detail at INFO; keep its warnings only. It also calls
    torch.distributed functions that torch 2.13 deprecated, once per collective."""
    import warnings

    from deepspeed.utils import logger as ds_logger
    from transformers.utils import logging as hf_logging

    ds_logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    hf_logging.disable_progress_bar()  # "Loading weights" bars in every rank's log
