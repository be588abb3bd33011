"""--deterministic: the same command on the same machine computes the same numbers, run after run."""
from __future__ import annotations

import logging
import os

import torch

LOGGER = logging.getLogger(__name__)


def make_deterministic(device: torch.device) -> None:
    """Make torch use deterministic kernels only; call before the first CUDA operation of the process.

    Seeds are fixed elsewhere (torch.manual_seed from --seed; DataLoader workers from (seed, rank) and their id, see
    utils.data.loader.build_loader). What stays: kernels whose result depends on the order in which threads add
    (cuDNN's autotuned algorithms, atomic adds on CUDA). CPU kernels are deterministic for a fixed thread count.
    On CUDA a few kernels have no deterministic version (the backward of adaptive pooling to sizes other than 1,
    which coordinate attention uses): torch warns about each of them instead of stopping the run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for reproducible matmuls
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    LOGGER.info("deterministic: torch deterministic algorithms on (%s threads); wall-clock columns go to timing.csv",
                torch.get_num_threads())
