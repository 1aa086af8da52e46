"""Device choice, seeding, RNG state and versions (metrics.jsonl: engine/loggers.py)."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


def select_device(name: str, threads: int | None = None) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; naming an unavailable device is an error."""
    if threads:
        torch.set_num_threads(threads)
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda: no CUDA device is available here (use device=auto or device=cpu)")
    elif name == "mps" and not has_mps:
        raise UsageError("device=mps: Apple MPS is not available here (use device=auto or device=cpu)")
    elif name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device.name={name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """RNG states as tensors and plain values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    """random.setstate needs tuples; a saved state may come back with lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def versions() -> dict[str, str]:
    import hydra

    from bigmodel_cli import __version__

    return {"bigmodel": __version__, "torch": torch.__version__, "hydra": hydra.__version__,
            "python": ".".join(map(str, __import__("sys").version_info[:3]))}
