"""ReCamMaster's DiT and camera input, written out from its published code with plain torch on a state dict.

Source: KwaiVGI/ReCamMaster @ 39c0dc2 -- diffsynth/models/wan_video_dit.py (DiTBlock.forward L203-220, WanModel
L223-370), diffsynth/pipelines/wan_video_recammaster.py (target and source concatenated in time, L278-288) and
inference_recammaster.py (camera rows, L94-151). Independent of the pack and of ComfyUI: it imports neither, so the
pack's patched ComfyUI model can be checked against it. One generalisation: ReCamMaster hard-codes the 30x52 token
grid of 480x832 px; here the grid is the latent's.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6


# --- camera input (inference_recammaster.py L94-151) -----------------------------------------------------------------
def _parse_matrix(text: str) -> np.ndarray:
    rows = text.strip().split("] [")
    return np.array([[float(v) for v in row.replace("[", "").replace("]", "").split()] for row in rows])


def extrinsics_c2w(path, cam_type: int, num_frames: int = 81) -> np.ndarray:
    """Camera ``cam_type``'s c2w poses [21, 4, 4] at frames 0, 4, ..., 80, before they are made relative."""
    data = json.loads(open(path, encoding="utf-8").read())
    traj = np.stack([_parse_matrix(data[f"frame{i}"][f"cam{cam_type:02d}"])
                     for i in list(range(num_frames))[::4]]).transpose(0, 2, 1)
    poses = []
    for c2w in traj:
        c2w = c2w[:, [1, 2, 0, 3]]
        c2w[:3, 1] *= -1.0
        c2w[:3, 3] /= 100
        poses.append(c2w)
    return np.stack(poses)


def relative_rows(first_c2w: np.ndarray, c2ws: np.ndarray) -> torch.Tensor:
    """get_relative_pose([first, c2w_i])[1][:3, :] flattened row-major, per pose: the cam_encoder input [N, 12]."""
    abs2rel = np.eye(4) @ np.linalg.inv(first_c2w)
    poses = np.array([abs2rel @ c2w for c2w in c2ws], dtype=np.float32)
    return torch.as_tensor(poses[:, :3, :]).reshape(len(c2ws), 12)


def camera_rows(path, cam_type: int) -> torch.Tensor:
    """ReCamMaster's target camera [21, 12]: every pose relative to the target's first one."""
    c2ws = extrinsics_c2w(path, cam_type)
    return relative_rows(c2ws[0], c2ws)


# --- the DiT (wan_video_dit.py) ---------------------------------------------------------------------------------------
def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    sinusoid = torch.outer(position.type(torch.float64), torch.pow(
        10000, -torch.arange(dim // 2, dtype=torch.float64, device=position.device).div(dim // 2)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).to(position.dtype)


def precompute_freqs_cis(dim: int, end: int = 1024, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].double() / dim))
    freqs = torch.outer(torch.arange(end, device=freqs.device), freqs)
    return torch.polar(torch.ones_like(freqs), freqs)


def rope_apply(x: torch.Tensor, freqs: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, s, _ = x.shape
    x = x.reshape(b, s, num_heads, -1)
    out = torch.view_as_complex(x.to(torch.float64).reshape(b, s, num_heads, -1, 2))
    return torch.view_as_real(out * freqs).flatten(2).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS)).to(dtype) * weight


def attention(q, k, v, num_heads: int) -> torch.Tensor:
    split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, -1).transpose(1, 2)  # "b s (n d) -> b n s d"
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


class ReCamMasterDiT:
    """WanModel + DiTBlock with ReCamMaster's cam_encoder / projector, run on a bare Wan state dict."""

    def __init__(self, state_dict: dict[str, torch.Tensor], num_heads: int, patch_size=(1, 2, 2)):
        self.sd = {k.removeprefix("model.diffusion_model."): v.float() for k, v in state_dict.items()}
        self.num_heads = num_heads
        self.patch_size = tuple(patch_size)
        self.dim = self.sd["patch_embedding.weight"].shape[0]
        self.freq_dim = self.sd["time_embedding.0.weight"].shape[1]
        self.depth = 1 + max(int(k.split(".")[1]) for k in self.sd if k.startswith("blocks."))
        head_dim = self.dim // num_heads
        self.freqs = (precompute_freqs_cis(head_dim - 2 * (head_dim // 3)), precompute_freqs_cis(head_dim // 3),
                      precompute_freqs_cis(head_dim // 3))

    def linear(self, x, name):
        return F.linear(x, self.sd[f"{name}.weight"], self.sd.get(f"{name}.bias"))

    def camera_term(self, block: int, cam_emb: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """cam_encoder(cam_emb), tiled over [target, source] (repeat(1, 2, 1)) and broadcast to each frame's h*w
        tokens ('b f h w d -> b (f h w) d'): what DiTBlock adds to the self-attention input. cam_emb: [B, T, 12]."""
        cam = self.linear(cam_emb, f"blocks.{block}.cam_encoder")
        cam = cam.repeat(1, 2, 1)
        cam = cam.unsqueeze(2).unsqueeze(3).repeat(1, 1, h, w, 1)
        return cam.reshape(cam.shape[0], -1, cam.shape[-1])

    def block(self, i: int, x, context, cam_emb, t_mod, freqs, h: int, w: int):
        p = f"blocks.{i}"
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (self.sd[f"{p}.modulation"] + t_mod).chunk(
            6, dim=1)
        input_x = F.layer_norm(x, (self.dim,), eps=EPS) * (1 + scale_msa) + shift_msa
        input_x = input_x + self.camera_term(i, cam_emb, h, w)
        q = rope_apply(rms_norm(self.linear(input_x, f"{p}.self_attn.q"), self.sd[f"{p}.self_attn.norm_q.weight"]),
                       freqs, self.num_heads)
        k = rope_apply(rms_norm(self.linear(input_x, f"{p}.self_attn.k"), self.sd[f"{p}.self_attn.norm_k.weight"]),
                       freqs, self.num_heads)
        v = self.linear(input_x, f"{p}.self_attn.v")
        y = self.linear(attention(q, k, v, self.num_heads), f"{p}.self_attn.o")
        x = x + gate_msa * self.linear(y, f"{p}.projector")
        normed = F.layer_norm(x, (self.dim,), self.sd.get(f"{p}.norm3.weight"), self.sd.get(f"{p}.norm3.bias"), EPS)
        q = rms_norm(self.linear(normed, f"{p}.cross_attn.q"), self.sd[f"{p}.cross_attn.norm_q.weight"])
        k = rms_norm(self.linear(context, f"{p}.cross_attn.k"), self.sd[f"{p}.cross_attn.norm_k.weight"])
        x = x + self.linear(attention(q, k, self.linear(context, f"{p}.cross_attn.v"), self.num_heads),
                            f"{p}.cross_attn.o")
        input_x = F.layer_norm(x, (self.dim,), eps=EPS) * (1 + scale_mlp) + shift_mlp
        ffn = self.linear(F.gelu(self.linear(input_x, f"{p}.ffn.0"), approximate="tanh"), f"{p}.ffn.2")
        return x + gate_mlp * ffn

    def forward(self, x, timestep, cam_emb, context):
        """model_fn_wan_video: x [1, C, F, H, W] (target and source frames), timestep [1], cam_emb [1, T, 12]."""
        t = self.linear(F.silu(self.linear(sinusoidal_embedding_1d(self.freq_dim, timestep), "time_embedding.0")),
                        "time_embedding.2")
        t_mod = self.linear(F.silu(t), "time_projection.1").unflatten(1, (6, self.dim))
        context = self.linear(F.gelu(self.linear(context, "text_embedding.0"), approximate="tanh"), "text_embedding.2")
        x = F.conv3d(x, self.sd["patch_embedding.weight"], self.sd["patch_embedding.bias"], stride=self.patch_size)
        f, h, w = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # 'b c f h w -> b (f h w) c'
        freqs = torch.cat([
            self.freqs[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            self.freqs[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            self.freqs[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ], dim=-1).reshape(f * h * w, 1, -1)
        for i in range(self.depth):
            x = self.block(i, x, context, cam_emb, t_mod, freqs, h, w)
        shift, scale = (self.sd["head.modulation"] + t.unsqueeze(1)).chunk(2, dim=1)  # Head.forward (batch 1)
        x = self.linear(F.layer_norm(x, (self.dim,), eps=EPS) * (1 + scale) + shift, "head.head")
        px, py, pz = self.patch_size
        x = x.reshape(x.shape[0], f, h, w, px, py, pz, -1)  # 'b (f h w) (x y z c) -> b c (f x) (h y) (w z)'
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], -1, f * px, h * py, w * pz)

    def recammaster_step(self, target_latents, source_latents, timestep, cam_emb, context):
        """One denoising prediction as WanVideoReCamMasterPipeline makes it: target and source concatenated in time
        (target first), the prediction of the target's frames kept."""
        frames = target_latents.shape[2]
        latents_input = torch.cat([target_latents, source_latents], dim=2)
        return self.forward(latents_input, timestep, cam_emb, context)[:, :, :frames]
