"""A PCA reconstruction as a module: the no-learning reconstruction, savable and exportable."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class PcaReconstruction(nn.Module):
    """Projection onto the top ``k`` principal directions of a set of images.

    The directions come from the eigen-decomposition of the N×N Gram matrix (N images), so
    a 256 px colour image (D ≈ 200,000 values) never needs a D×D matrix. ``k`` may be
    lowered after fitting (the directions are nested), never raised; :meth:`truncate` drops
    the unused directions. The mean and the directions are buffers, so a model that holds
    one saves it in its checkpoint and exports it in its ONNX graph (two matrix products).
    A module built without images is empty and takes its sizes from the state dict it loads.
    """

    def __init__(self, images: Tensor | None = None, max_components: int = 1) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("directions", torch.zeros(0, 0))
        self.k = 0
        if images is not None:
            self.fit(images, max_components)

    @torch.no_grad()
    def fit(self, images: Tensor, max_components: int) -> PcaReconstruction:
        """Fit on ``images`` (N, C, H, W): keep at most ``max_components`` directions."""
        flat = images.flatten(1).float()  # (N, D)
        mean = flat.mean(dim=0)
        centred = flat - mean
        eigenvalues, eigenvectors = torch.linalg.eigh((centred @ centred.T).double())
        order = eigenvalues.flip(0)
        vectors = eigenvectors.flip(1)
        keep = int((order > order[0].clamp_min(1e-12) * 1e-9).sum())
        keep = max(1, min(keep, max_components))
        # (D, N) @ (N, k) / sqrt(lambda): orthonormal directions in image space.
        directions = (centred.T.double() @ vectors[:, :keep]) / order[:keep].sqrt()
        self.mean = mean.to(self.mean.device)
        self.directions = directions.float().to(self.directions.device)
        self.k = keep
        return self

    @property
    def fitted(self) -> bool:
        return self.k > 0

    def truncate(self) -> None:
        """Drop the directions beyond ``k`` (a smaller checkpoint and graph)."""
        self.directions = self.directions[:, : self.k].contiguous()

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> its projection, same shape and dtype."""
        flat = images.flatten(1).float() - self.mean
        basis = self.directions[:, : self.k]  # (D, k)
        return ((flat @ basis) @ basis.T + self.mean).view_as(images).to(images.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # An empty module takes the fitted sizes from the file.
        for name in ("mean", "directions"):
            incoming = state_dict.get(prefix + name)
            if incoming is not None and incoming.shape != self._buffers[name].shape:
                self._buffers[name] = self._buffers[name].new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.k = int(self.directions.shape[1]) if self.directions.dim() == 2 else 0
