"""Device, precision, CUDA-graph and attention-kernel choices, and moving batches to the device."""
import contextlib

import torch

from common.distributed import Dist
from common.errors import UserError


def choose_device(name: str, index: int | None = None) -> torch.device:
    """`auto` takes CUDA when present. `index`: the GPU of this process under torchrun (its local rank)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")


def choose_precision(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32 (`auto`: docs/nli.md; fp32 on the CPU, where autocast is slower)."""
    if amp == "off" or (amp == "auto" and device.type == "cpu"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def choose_cuda_graphs(choice: str, device: torch.device, dtype, d: Dist) -> tuple[bool, str]:
    """(on?, why) for --cuda-graphs auto|on|off. `on` where graphs cannot run is a user error."""
    if choice == "off":
        return False, "off (--cuda-graphs off)"
    if d.active:
        if choice == "on":
            raise UserError("--cuda-graphs on is not supported under torchrun yet (DDP's gradient all-reduce would "
                            "have to be captured too); use auto or off")
        return False, "off (not captured under torchrun/DDP yet)"
    if device.type != "cuda":
        if choice == "on":
            raise UserError("--cuda-graphs on needs a CUDA device, and this run is on the CPU; use auto or off")
        return False, "off (no CUDA device)"
    if dtype == torch.float16:
        if choice == "on":
            raise UserError("--cuda-graphs on does not work with fp16, whose GradScaler reads the device every step; "
                            "use --amp bf16 or --cuda-graphs off")
        return False, "off (fp16: the GradScaler reads the device every step)"
    return True, "on"


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype`, or a no-op for fp32. The weight-cast cache is off: a CUDA graph must not
    keep casts made while it was captured (and each weight is cast once per forward anyway)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def choose_attention_kernels(device: torch.device) -> None:
    """cuDNN attention off: it plans anew for every sequence length (about 20 s per process on an H200);
    SDPA then takes flash or memory-efficient kernels, which do not (docs/speed.md)."""
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


def pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t in page-locked memory when the device is CUDA (so the copy can run without blocking)."""
    return t.pin_memory() if device.type == "cuda" else t


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch of CPU tensors to device (on CUDA through pinned memory, without blocking the host)."""
    return {k: pinned(v, device).to(device, non_blocking=True) for k, v in batch.items()}
