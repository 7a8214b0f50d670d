"""The decoder-only transformer (llama / mistral / qwen2 / qwen3) in flax.linen.

Layers are stacked along a leading axis L and run with `nn.scan`, so compile time does not grow with
depth and FSDP can shard one stacked array per weight. Attention takes an explicit padding mask and
position ids (batches are left-padded); the forward also returns every layer's keys/values, which
the sampler's prefill turns into its cache (decoding itself runs pmd_jax/model/decode.py, the same
arithmetic with the layers unrolled). Shapes: B batch, T tokens, D width, H query heads, K key/value
heads, Dh head width, V vocabulary, L layers.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from pmd_jax.model.config import ATTENTION_IMPLS, ModelConfig, rope_inv_freq
from pmd_jax.platform import target_backend, traced_layer_spec, traced_mesh

# What the backward pass keeps of each layer's forward: "none" keeps every activation, "dots"
# keeps the outputs of the weight matmuls and recomputes the rest (norms, RoPE, attention
# scores, the SwiGLU product), "full" keeps only the layer's input and recomputes the layer.
REMAT_POLICIES = ("none", "dots", "full")
NEG_INF = -1e30  # finite, so a fully masked row gives a uniform softmax rather than NaN


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, computed in float32 (HF-compatible)."""

    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        return rms_norm(x, scale, self.eps, self.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype) -> jax.Array:
    """x / rms(x) * scale over the last axis; the statistics in float32, the result in dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return normed.astype(dtype) * scale.astype(dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE. x: [B, T, N, Dh]; positions: [B, T] int; inv_freq: [Dh // 2]."""
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, self_mask: jax.Array, impl: str = "naive"
) -> jax.Array:
    """Grouped-query self-attention, softmax in float32. impl: ModelConfig.attention_impl.

    q: [B, T, H, Dh]; k, v: [B, T, K, Dh]; self_mask: [B, T, T] bool (causal & padding, & the
    sliding window where the layer has one: every impl but splash honours any mask).
    Returns [B, T, H, Dh]. "naive" (below) is the reference the library kernels are tested against.
    """
    if impl != "naive":
        return fused_attention(q, k, v, self_mask, impl)
    b, t, h, dh = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, dh) * jnp.asarray(dh**-0.5, q.dtype)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    mask = self_mask[:, None, None]  # [B, 1, 1, T, T]
    probs = jax.nn.softmax(jnp.where(mask, scores, NEG_INF), axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, dh)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, self_mask: jax.Array, impl: str
) -> jax.Array:
    """Self-attention through a library kernel. impl: "xla" | "cudnn" (GPU) | "splash" (TPU).

    q: [B, T, H, Dh]; k, v: [B, T, K, Dh] (K divides H; no K/V repeat needed); self_mask: [B, T, T].
    """
    backend = target_backend()
    if impl in ("xla", "cudnn"):
        if impl == "cudnn" and backend != "gpu":
            raise ValueError(f"attention_impl='cudnn' needs a GPU backend, not {backend!r}")
        # [B, 1, T, T], broadcast over heads. Any boolean mask (padding, sliding window): the
        # xla path masks the logits with it, the cudnn one adds it as a bias.
        mask = self_mask[:, None]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    if impl == "splash":
        if backend != "tpu":
            raise ValueError(f"attention_impl='splash' needs a TPU backend, not {backend!r}")
        return splash_attention(q, k, v, self_mask)
    raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")


def splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, self_mask: jax.Array, interpret: bool = False
) -> jax.Array:
    """Causal GQA self-attention with the TPU splash kernel (one MQA kernel per key/value head).

    Shapes as in `fused_attention`; T must be a multiple of 128. Padding enters as segment ids read
    off the last row of `self_mask` (left padding: the last token is real and sees every real key),
    so padded queries attend to padded keys only; their outputs are never used. interpret: run the
    kernel as a loop (tests on CPU). Any other masking in `self_mask` (a sliding window) is not
    applied: ModelConfig refuses sliding_window with attention_impl="splash". Inside a program on
    a mesh (`platform.on_mesh`) the kernel runs once per device under shard_map: XLA cannot
    partition a Mosaic kernel itself.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, t, h, dh = q.shape
    kv_heads = k.shape[2]
    if t % 128:
        raise ValueError(f"attention_impl='splash' needs T a multiple of 128, got T={t}")
    group = h // kv_heads
    block = next(size for size in (512, 256, 128) if t % size == 0)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    head_mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * group)
    kernel = splash.make_splash_mqa_single_device(head_mask, block_sizes=sizes, interpret=interpret)

    def local(q, k, v, self_mask):
        """The kernel on one device's rows and heads: q [b, T, h, Dh], k/v [b, T, k, Dh]."""
        b, _, h, _ = q.shape
        kv_heads = k.shape[2]
        segments = self_mask[:, -1, :].astype(jnp.int32)  # [b, T]: 1 real, 0 padding
        q = jnp.moveaxis(q.reshape(b, t, kv_heads, group, dh), 1, 3) * jnp.asarray(
            dh**-0.5, q.dtype
        )
        k, v = jnp.moveaxis(k, 1, 2), jnp.moveaxis(v, 1, 2)  # [b, k, T, Dh]

        def one_head(q_kgtd, k_td, v_td, segment_t):
            return kernel(q_kgtd, k_td, v_td, segment_ids=splash.SegmentIds(segment_t, segment_t))

        per_kv_head = jax.vmap(one_head, in_axes=(0, 0, 0, None))
        out = jax.vmap(per_kv_head)(q, k, v, segments)  # [b, k, G, T, Dh]
        return jnp.moveaxis(out, 3, 1).reshape(b, t, h, dh)

    mesh = traced_mesh()
    if mesh is None or mesh.size == 1:
        return local(q, k, v, self_mask)
    # Mosaic kernels are not partitioned by XLA: run one per device, rows over the batch axes
    # (data, fsdp) and heads over tensor (the q/k/v projections are column-split that way).
    rows = ("data", "fsdp")
    divisor = mesh.shape["data"] * mesh.shape["fsdp"]
    if b % divisor:
        raise ValueError(f"splash attention on mesh {dict(mesh.shape)}: B={b} rows do not split")
    heads = "tensor" if kv_heads % mesh.shape["tensor"] == 0 else None
    if heads is None and mesh.shape["tensor"] > 1:
        raise ValueError(
            f"splash attention: num_kv_heads={kv_heads} does not split over tensor="
            f"{mesh.shape['tensor']}"
        )
    spec = P(rows, None, heads, None)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, spec, spec, P(rows, None, None)),
        out_specs=spec,
        check_vma=False,
    )(q, k, v, self_mask)


class Block(nn.Module):
    """One pre-norm decoder layer: attention + SwiGLU MLP. Scanned over layers."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, self_mask, windowed_mask=None, windowed=None):
        """x: [B, T, D]; positions: [B, T]; self_mask: [B, T, T] -> (x', (k, v) [B, T, K, Dh]).

        With a per-layer sliding window (ModelConfig.sliding_window_layers), windowed_mask
        [B, T, T] is the windowed mask and windowed (a bool, scanned over layers) picks it."""
        cfg = self.config
        if windowed_mask is not None:
            self_mask = jnp.where(windowed, windowed_mask, self_mask)
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dense = functools.partial(nn.Dense, dtype=dtype, param_dtype=param_dtype)
        norm = functools.partial(
            RMSNorm, eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype
        )
        b, t, _ = x.shape
        h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

        hidden = norm(name="attn_norm")(x)
        q = dense(h * dh, use_bias=cfg.qkv_bias, name="q_proj")(hidden).reshape(b, t, h, dh)
        k = dense(kv * dh, use_bias=cfg.qkv_bias, name="k_proj")(hidden).reshape(b, t, kv, dh)
        v = dense(kv * dh, use_bias=cfg.qkv_bias, name="v_proj")(hidden).reshape(b, t, kv, dh)
        if cfg.qk_norm:
            q, k = norm(name="q_norm")(q), norm(name="k_norm")(k)
        inv_freq = jnp.asarray(rope_inv_freq(cfg))
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        attn = attention(q, k, v, self_mask, cfg.attention_impl).reshape(b, t, h * dh)
        x = x + dense(cfg.hidden_size, use_bias=cfg.o_bias, name="o_proj")(attn)

        hidden = norm(name="mlp_norm")(x)
        gate = dense(cfg.intermediate_size, use_bias=cfg.mlp_bias, name="gate_proj")(hidden)
        up = dense(cfg.intermediate_size, use_bias=cfg.mlp_bias, name="up_proj")(hidden)
        x = x + dense(cfg.hidden_size, use_bias=cfg.mlp_bias, name="down_proj")(nn.silu(gate) * up)
        return x, (k, v)


def pin_layer_weights(variables: dict) -> dict:
    """One layer's weights (inside the scan), each constrained to its layer spec when the program
    is traced with one (`platform.on_mesh(mesh, layer_spec=...)`, the train step); unchanged
    otherwise. Pinned, an FSDP-split weight is gathered where the layer uses it, per layer."""
    spec_of, mesh = traced_layer_spec(), traced_mesh()
    if spec_of is None or mesh is None:
        return variables

    def pin(path, x):
        name = "/".join(str(getattr(k, "key", k)) for k in path[1:])  # path[0]: the collection
        spec = spec_of(name, tuple(x.shape), mesh)
        return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(pin, variables)


def remat_block(policy: str):
    """Block with its weights pinned (`pin_layer_weights`), wrapped for the backward pass by a
    REMAT_POLICIES name. The pin sits inside the remat, so a recomputed layer gathers its weights
    again rather than keeping them gathered from the forward. `prevent_cse=False`: under
    `nn.scan` the loop already keeps XLA from merging the recomputation into the forward."""
    block = nn.map_variables(Block, "params", trans_in_fn=pin_layer_weights, init=True)
    if policy == "none":
        return block
    if policy == "dots":
        saveable = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        return nn.remat(block, prevent_cse=False, policy=saveable)
    if policy == "full":
        return nn.remat(block, prevent_cse=False)
    raise ValueError(f"remat={policy!r}; expected one of {REMAT_POLICIES}")


class Transformer(nn.Module):
    """Token ids -> final hidden states (and the new tokens' keys/values); `logits` maps hidden -> V."""

    config: ModelConfig
    remat: str = "none"  # REMAT_POLICIES: what each layer recomputes in the backward pass

    def setup(self):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=nn.initializers.normal(0.02),
        )
        block = remat_block(self.remat)
        # positions and masks are the same for every layer; with a per-layer sliding window the
        # windowed mask is too, and one flag per layer is scanned.
        per_layer = cfg.sliding_window_layers is not None
        in_axes = (nn.broadcast,) * 3 + (0,) if per_layer else (nn.broadcast,) * 2
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=in_axes,
            length=cfg.num_layers,
        )(cfg)
        self.final_norm = RMSNorm(cfg.rms_norm_eps, dtype, param_dtype)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype
            )

    def __call__(
        self, tokens: jax.Array, positions: jax.Array, token_mask: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """tokens, positions: [B, T] int; token_mask: [B, T] bool (False on padding).

        Returns final-norm hidden states [B, T, D] and the keys/values [L, B, T, K, Dh] (the
        sampler's prefill keeps them as its cache). Each token attends causally to real tokens,
        within ModelConfig.sliding_window real tokens on the layers that have one.
        """
        cfg = self.config
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        self_mask = causal[None] & token_mask[:, None, :]
        x = self.embed(tokens)
        if cfg.sliding_window is None:
            x, new_kv = self.layers(x, positions, self_mask)
        elif cfg.sliding_window_layers is None:  # every layer
            x, new_kv = self.layers(x, positions, self_mask & window_mask(token_mask, cfg))
        else:
            windowed = jnp.asarray(cfg.sliding_window_layers, bool)  # [L]
            window = self_mask & window_mask(token_mask, cfg)
            x, new_kv = self.layers(x, positions, self_mask, window, windowed)
        return self.final_norm(x), new_kv

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden: [..., D] -> float32 logits [..., V]."""
        if self.config.tie_embeddings:
            out = self.embed.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)

    def init_all(self, tokens: jax.Array, positions: jax.Array, token_mask: jax.Array) -> jax.Array:
        """Touch every parameter (used by `init_params`)."""
        hidden, _ = self(tokens, positions, token_mask)
        return self.logits(hidden)


def window_mask(token_mask: jax.Array, config: ModelConfig) -> jax.Array:
    """[B, T, T] bool: key j is within query i's sliding window, i - window < j <= i counted in
    real tokens (transformers' `sliding_window_overlay`, on indices that skip padding, so a
    left-padded row gets the window it would get unpadded). True for every key after the query:
    combine it with the causal mask. token_mask: [B, T] bool."""
    real_index = jnp.cumsum(token_mask.astype(jnp.int32), axis=-1)  # [B, T]
    behind = real_index[:, :, None] - real_index[:, None, :]  # real tokens in (j, i]
    return behind < config.sliding_window


def positions_from_mask(token_mask: jax.Array) -> jax.Array:
    """Position ids [B, T] for a left-padded batch: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(token_mask.astype(jnp.int32), axis=-1) - 1, 0)


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
    """Random parameters (normal(0.02) embeddings, lecun-normal kernels) as a pytree."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    mask = jnp.ones((1, 1), bool)
    # The parameters do not depend on the attention kernel; the reference traces at any length.
    model = Transformer(config.replace(attention_impl="naive"))
    return model.init(rng, tokens, tokens, mask, method=Transformer.init_all)["params"]


@functools.partial(jax.jit, static_argnames=("config", "return_hidden"))
def forward(
    params: dict,
    config: ModelConfig,
    tokens: jax.Array,
    token_mask: jax.Array,
    positions: jax.Array | None = None,
    return_hidden: bool = False,
):
    """Full-sequence forward. tokens, token_mask: [B, T] -> logits float32 [B, T, V] (, hidden [B, T, D])."""
    if positions is None:
        positions = positions_from_mask(token_mask)
    model = Transformer(config)
    hidden, _ = model.apply({"params": params}, tokens, positions, token_mask)
    logits = model.apply({"params": params}, hidden, method=Transformer.logits)
    return (logits, hidden) if return_hidden else logits
