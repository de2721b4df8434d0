"""Vision Transformer of arcface_torch (vit_t .. vit_h), state_dict-compatible with upstream.

Differences from upstream, all deliberate:
- fp16 is honoured: upstream hard-wired a CUDA autocast around qkv, proj and the MLP branch
  even with fp16 off. Here those same regions autocast only when `fp16=True` (then the numerics
  match upstream on GPU); with fp16 off the model is pure float32 on every device.
- Gradient checkpointing is a constructor argument (non-reentrant, per block, training only).
- `mask_ratio` is used as given. Upstream called `random_masking(x)` without passing it, so
  any ratio > 0 masked 10% of the tokens; the registry in `backbones/__init__.py` therefore
  builds the `*_mask_005` models with 0.1, which is what upstream trained.
"""
from __future__ import annotations

import torch
from torch import nn

from .iresnet import amp_context, run_blocks

__all__ = ["VisionTransformer", "Attention", "Block", "PatchEmbed", "DropPath"]


class DropPath(nn.Module):
    """Stochastic depth per sample; survivors scaled by 1/keep_prob (training only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)


class Mlp(nn.Module):
    """fc1 -> ReLU6 -> fc2."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention; qkv/proj in the fp16 region, the attention matrix always float32."""

    def __init__(self, dim: int, num_heads: int = 8, fp16: bool = False, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.fp16 = fp16
        self.amp_dtype = amp_dtype
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, num_token, embed_dim = x.shape
        with amp_context(x, self.fp16, self.amp_dtype):
            qkv = self.qkv(x).reshape(batch_size, num_token, 3, self.num_heads,
                                      embed_dim // self.num_heads).permute(2, 0, 3, 1, 4)
        with amp_context(x, False):
            q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(batch_size, num_token, embed_dim)
        with amp_context(x, self.fp16, self.amp_dtype):
            return self.proj(x)


class Block(nn.Module):
    """x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x))) (the latter in the fp16 region)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 fp16: bool = False, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.fp16 = fp16
        self.amp_dtype = amp_dtype
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, fp16, amp_dtype)
        self.drop_path = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        with amp_context(x, self.fp16, self.amp_dtype):
            return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size conv; tokens in row-major order."""

    def __init__(self, img_size: int = 112, patch_size: int = 9, in_channels: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = img_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"ViT expects {self.img_size}x{self.img_size} input images, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        return self.proj(x).flatten(2).transpose(1, 2)


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep int(L * (1 - mask_ratio)) tokens per sample (lowest uniform noise); also return the restore order."""
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, dim)), ids_restore


class VisionTransformer(nn.Module):
    """arcface_torch's face ViT: patch embedding, pre-norm blocks, flatten-Linear-BN-Linear-BN head."""

    def __init__(self, img_size: int = 112, patch_size: int = 9, num_classes: int = 512,
                 embed_dim: int = 256, depth: int = 12, num_heads: int = 8, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1, mask_ratio: float = 0.1, fp16: bool = False,
                 gradient_checkpointing: bool = False, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self._fp16, self._amp_dtype = fp16, amp_dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, dpr[i], fp16, amp_dtype)
                                     for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * self.num_patches, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, num_classes, bias=False),
            nn.BatchNorm1d(num_classes, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @property
    def fp16(self) -> bool:
        return self._fp16

    @fp16.setter
    def fp16(self, value: bool) -> None:
        """Switch the autocast regions of every block."""
        self._fp16 = value
        for m in self.modules():
            if isinstance(m, (Attention, Block)):
                m.fp16 = value

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self._amp_dtype

    @amp_dtype.setter
    def amp_dtype(self, value: torch.dtype | None) -> None:
        self._amp_dtype = value
        for m in self.modules():
            if isinstance(m, (Attention, Block)):
                m.amp_dtype = value

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        batch_size = x.shape[0]
        x = self.patch_embed(x) + self.pos_embed
        masking = self.training and self.mask_ratio > 0
        if masking:
            x, ids_restore = random_masking(x, self.mask_ratio)
        x = run_blocks(self.blocks, x, self.gradient_checkpointing and self.training)
        x = self.norm(x.float())
        if masking:
            mask_tokens = self.mask_token.repeat(batch_size, ids_restore.shape[1] - x.shape[1], 1)
            x = torch.cat([x, mask_tokens], dim=1)
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        return torch.reshape(x, (batch_size, self.num_patches * self.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(self.forward_features(x))
