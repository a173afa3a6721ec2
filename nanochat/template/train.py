"""
A small GPT trained from scratch for a fixed wall-clock budget. This is the file you edit.

The harness owns what must stay fixed for runs to be comparable: the data, the tokenizer,
the clock and the metric. Every run trains up to the same deadline, the budget plus a start-up
allowance after this file starts (torch is imported by then): time spent starting up (model build,
compilation) comes out of training, and a faster start trains longer. When training ends, the harness evaluates the model you hand
back, in its own process, and records val_bpb (validation bits per byte, lower is better).
Everything else here is yours to change: model, optimizer, schedule, batch size.

The evaluator never runs this file. The model reaches it as data: `run.export(model)` traces
model.forward with torch.export (a graph of standard torch operations, at the batch shape the
evaluator scores), and `run.hand_back(model)` adds the trained weights. So the model must export
(the evaluation refuses the run otherwise; run.export fails at once, saying why and where):
  - `model(idx)` with idx of shape (B, T), int64, returns logits of shape (B, T, vocab_size), and
    nothing else: forward is a pure function of idx.
  - No Python control flow on tensor values (`if x.sum() > 0`, `.item()`, `.tolist()`): tracing
    follows one path. Branches on shapes, config fields and Python numbers are fine.
  - No state kept or changed between calls: no buffer updates in forward, no caches.
  - Standard torch operations only: no random ones in forward (dropout, torch.rand), no custom
    or compiled kernels of your own, no in-place writes to inputs.
  - Causal: logits at position t depend only on idx[row, :t+1] (checked on scored batches).
  - Anything forward depends on is fixed when run.export(model) is called, right after the model
    is built: a second process runs this file up to there and exports its own fresh model while
    this one trains (so do nothing before run.export that must happen only once). If the model
    changes later (a parameter added, a window grown), hand_back notices and exports again at the
    end, which costs a few seconds.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoresearch_mcp.nanochat import harness

# ---------------------------------------------------------------------------------------------
# Hyperparameters

# Model size per profile (the profile fixes sequence length, vocabulary and budget). Width follows
# depth: width = ASPECT_RATIO * depth, rounded up to whole heads of HEAD_DIM, so a deeper model is
# one edit ("h100": 8 -> 10 gives width 640). h100 depth 8 is width 512, ~50M parameters.
DEPTH = {"h100": 8, "gpu": 6, "cpu": 2}
ASPECT_RATIO = 64
HEAD_DIM = {"h100": 128, "gpu": 64, "cpu": 32}
# Batch per profile. rows: sequences per forward pass; batch_tokens: tokens per optimizer step
# (gradients are accumulated over batch_tokens / (rows * seq_len) forward passes).
ROWS = {"h100": 64, "gpu": 16, "cpu": 16}
BATCH_TOKENS = {"h100": 2**19, "gpu": 2**17, "cpu": 2**12}
# Attention span per layer, cycled over the depth: L = full causal, S = the last
# SHORT_WINDOW_FRACTION * seq_len tokens only. The last layer is always L.
WINDOW_PATTERN = "L"
SHORT_WINDOW_FRACTION = 0.5
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap): keeps early training stable
ROTARY_BASE = 10000.0

# Learning rates. Muon for the hidden matrices, AdamW for everything else. The embedding and
# unembedding rates are for width 768 and scale as 1/sqrt(width), so they transfer across the
# profiles' model sizes.
MATRIX_LR = 0.02
EMBEDDING_LR = 0.2
UNEMBEDDING_LR = 0.004
SCALAR_LR = 0.5
ADAM_BETAS = (0.8, 0.95)
MUON_MOMENTUM = 0.95
MUON_WEIGHT_DECAY = 0.0

# Schedule over training progress (0..1, to the deadline): linear warmup, constant, linear warmdown.
WARMUP_FRACTION = 0.0
WARMDOWN_FRACTION = 0.5
FINAL_LR_FRACTION = 0.0


# ---------------------------------------------------------------------------------------------
# Model


@dataclass
class GPTConfig:
    vocab_size: int
    seq_len: int
    depth: int
    width: int
    head_dim: int
    window_pattern: str = WINDOW_PATTERN
    short_window: int = 0  # keys an S layer attends to (see WINDOW_PATTERN)
    logit_softcap: float = LOGIT_SOFTCAP

    def window(self, layer: int) -> int | None:
        """Keys a query in `layer` may attend to, or None for full causal attention."""
        if layer == self.depth - 1 or self.window_pattern[layer % len(self.window_pattern)] == "L":
            return None
        return self.short_window

    def has_value_embedding(self, layer: int) -> bool:
        # Alternating layers, ending with the last one.
        return layer % 2 == (self.depth - 1) % 2


def norm(x: torch.Tensor) -> torch.Tensor:
    # Parameter-free RMSNorm: the learnable gains would add little and cost optimizer work.
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # (1, T, 1, D/2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate pairs of channels by a position-dependent angle: relative positions for free.
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def sliding_window_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    """(T, T) boolean mask, True where query t may attend to key s: t - window < s <= t."""
    position = torch.arange(T, device=device)
    distance = position[:, None] - position[None, :]
    return (distance >= 0) & (distance < window)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head = config.width // config.head_dim
        self.head_dim = config.head_dim
        self.window = config.window(layer)
        self.c_q = nn.Linear(config.width, config.width, bias=False)
        self.c_k = nn.Linear(config.width, config.width, bias=False)
        self.c_v = nn.Linear(config.width, config.width, bias=False)
        self.c_proj = nn.Linear(config.width, config.width, bias=False)
        # How much of the token's value embedding to mix into the values (value-embedding layers).
        self.ve_lambda = nn.Parameter(torch.full((1,), 0.5)) if config.has_value_embedding(layer) else None

    def forward(self, x, value_embedding, cos, sin):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        if value_embedding is not None:
            v = v + self.ve_lambda * value_embedding.view(B, T, self.n_head, self.head_dim)
        # QK norm bounds the attention logits, which lets Muon run at high learning rates.
        q = apply_rotary(norm(q), cos, sin).transpose(1, 2)
        k = apply_rotary(norm(k), cos, sin).transpose(1, 2)
        v = v.transpose(1, 2)
        if self.window is None or self.window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash kernel on CUDA
        else:
            # An explicit mask costs the flash kernel (the masked one runs instead): a windowed
            # layer is cheaper in FLOPs but not in time unless the kernel can skip blocks.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(T, self.window, x.device))
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.width, 4 * config.width, bias=False)
        self.c_proj = nn.Linear(4 * config.width, config.width, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # relu^2: sparse and cheap, beats GELU here


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, value_embedding, cos, sin):
        x = x + self.attn(norm(x), value_embedding, cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.width)
        # Value embeddings: a second per-token table feeding attention values directly, on
        # alternating layers; cheap capacity (a lookup, no FLOPs).
        self.value_embeds = nn.ModuleDict(
            {
                str(i): nn.Embedding(config.vocab_size, config.width)
                for i in range(config.depth)
                if config.has_value_embedding(i)
            }
        )
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))
        self.lm_head = nn.Linear(config.width, config.vocab_size, bias=False)  # untied from wte
        # Per-layer residual scalars: each block's input is resid * x + x0 * (the embedding).
        self.resid_lambdas = nn.Parameter(torch.ones(config.depth))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.depth))
        cos, sin = rotary_tables(config.seq_len, config.head_dim, ROTARY_BASE)
        self.register_buffer("cos", cos, persistent=False)  # rebuilt from config, not saved
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        bound = math.sqrt(3.0 / self.config.width)  # uniform with std 1/sqrt(fan_in)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                linear.weight.uniform_(-bound, bound)
            # Zero output projections: every block starts as the identity.
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight.zero_()
        self.wte.weight.normal_(std=1.0)
        for table in self.value_embeds.values():
            table.weight.normal_(std=1.0)
        self.lm_head.weight.normal_(std=0.001)  # start near uniform predictions

    def forward(self, idx, targets=None):
        B, T = idx.shape
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            value_embedding = self.value_embeds[str(i)](idx) if self.config.has_value_embedding(i) else None
            x = block(x, value_embedding, cos, sin)
        logits = self.lm_head(norm(x)).float()
        cap = self.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per matmul weight, plus attention over the keys seen."""
        lookups = self.wte.weight.numel() + sum(t.weight.numel() for t in self.value_embeds.values())
        matmul_params = sum(p.numel() for p in self.parameters()) - lookups
        c = self.config
        attention = sum(12 * c.width * min(c.window(i) or c.seq_len, c.seq_len) for i in range(c.depth))
        return 6 * matmul_params + attention


# ---------------------------------------------------------------------------------------------
# Optimizers


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T: a quintic Newton-Schulz iteration that pushes every
    singular value towards 1. It need not converge exactly; low precision is fine on GPU."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalized updates: every direction of a matrix learns at the same
    rate, which suits hidden weight matrices (not embeddings, the head, or scalars)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buffer = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buffer.lerp_(p.grad, 1 - momentum)
                update = orthogonalize(p.grad.lerp(buffer, momentum))  # Nesterov look-ahead
                # Tall matrices get a larger step so the update's RMS does not shrink with shape.
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-lr * scale)


def make_optimizers(model: GPT, device: torch.device) -> list[torch.optim.Optimizer]:
    width_scale = (model.config.width / 768) ** -0.5
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    scalars = [p for p in model.blocks.parameters() if p.ndim < 2] + [model.resid_lambdas, model.x0_lambdas]
    embeddings = [model.wte.weight, *(t.weight for t in model.value_embeds.values())]
    adam_groups = [
        dict(params=embeddings, lr=EMBEDDING_LR * width_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale),
        dict(params=scalars, lr=SCALAR_LR),
    ]
    adamw = torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0, fused=device.type == "cuda")
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=MUON_WEIGHT_DECAY)
    optimizers = [adamw, muon]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_FRACTION:
        return progress / WARMUP_FRACTION
    if progress <= 1 - WARMDOWN_FRACTION:
        return 1.0
    remaining = (1 - progress) / WARMDOWN_FRACTION
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * remaining


# ---------------------------------------------------------------------------------------------
# Training


def model_config(run: harness.Run) -> GPTConfig:
    """The profile's model, grown by run.scale (1 normally; larger for scale-up checks).

    Depth grows by sqrt(scale) and width follows through the aspect ratio, so the compute per
    token grows about as fast as the budget, which the server multiplies by scale."""
    profile = run.profile.name
    depth = max(1, round(DEPTH[profile] * math.sqrt(run.scale)))
    head_dim = HEAD_DIM[profile]
    width = head_dim * math.ceil(ASPECT_RATIO * depth / head_dim)
    return GPTConfig(
        vocab_size=run.vocab_size,
        seq_len=run.seq_len,
        depth=depth,
        width=width,
        head_dim=head_dim,
        short_window=int(SHORT_WINDOW_FRACTION * run.seq_len),
    )


def main() -> None:
    run = harness.start()  # reads the run's context, seeds the RNGs, picks the device
    config = model_config(run)
    model = GPT(config).to(run.device)
    # The graph the evaluator will score, traced now: a model it cannot score fails here, in seconds.
    run.export(model)
    run.set_flops_per_token(model.flops_per_token())
    optimizers = make_optimizers(model, run.device)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{num_params / 1e6:.1f}M parameters, {config}", flush=True)

    on_cuda = run.device.type == "cuda"
    torch.set_float32_matmul_precision("high")  # TF32 for whatever still runs in fp32 on CUDA
    # bf16 autocast and compilation pay off on CUDA; CPU and MPS train in plain fp32.
    train_model = torch.compile(model, dynamic=False) if on_cuda else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else contextlib.nullcontext()

    rows = ROWS[run.profile.name]
    accumulation = max(1, BATCH_TOKENS[run.profile.name] // (rows * run.seq_len))
    batches = run.train_batches(rows)  # stops yielding at the deadline
    while not run.done:
        lr_mult = lr_multiplier(run.progress)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_mult
        for _ in range(accumulation):
            inputs, targets = next(batches)
            with autocast:
                loss = train_model(inputs, targets)
            (loss / accumulation).backward()
        for optimizer in optimizers:
            optimizer.step()
        model.zero_grad(set_to_none=True)
        # Advances the clock, logs the step, stops the run if the loss is NaN or exploding.
        run.log_step(loss.detach(), lr_mult, tokens=accumulation * rows * run.seq_len)

    run.hand_back(model)


if __name__ == "__main__":
    main()
