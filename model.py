"""BERT (Devlin et al. 2018) as Hugging Face's `modeling_bert.py` computes it, with its weight names.

Names follow Hugging Face so a state dict crosses over without a mapping table:
`bert.embeddings.word_embeddings`, `bert.encoder.layer.N.attention.self.query`,
`...attention.output.LayerNorm`, `...intermediate.dense`, `...output.dense`, `bert.pooler.dense`,
`cls.predictions.transform`, `cls.predictions.decoder`, `cls.seq_relationship`, `classifier`.

Shapes: B batch, T tokens, H hidden, nh heads, hs head size, P masked positions, V vocabulary.
"""

import contextlib
import difflib
import json
import math
import threading
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from errors import UserError


@dataclass
class BertConfig:
    vocab_size: int = 8007
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, d, vocab_size=None):
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in known})
        if vocab_size is not None:  # the vocabulary file decides, not the JSON
            config.vocab_size = vocab_size
        return config

    @classmethod
    def from_json_file(cls, path, vocab_size=None):
        """A --config file, or a one-line error naming the file and what is wrong in it (the line and column of
        a JSON syntax error, a field of the wrong type, a misspelt field name)."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; a config is a JSON file like config_half.json") from None
        except IsADirectoryError:
            raise UserError(f"{path} is a directory; pass the config.json in it") from None
        check_config_fields(d, path)
        return cls.from_dict(d, vocab_size)

    def to_dict(self):
        return asdict(self)


def check_config_fields(d, path):
    """One-line error for a config whose fields a BertConfig cannot take. Fields it does not know are left out
    (a Hugging Face config.json has many), unless the name is a near miss of one it knows (hidden_sise)."""
    if not isinstance(d, dict):
        raise UserError(f"{path} holds a JSON {type(d).__name__}, not an object of config fields like config_half.json")
    types = {f.name: f.type for f in fields(BertConfig)}  # int, float or str
    for name, value in d.items():
        if name not in types:
            near = difflib.get_close_matches(name, types, 1, 0.9)
            if near:
                raise UserError(f"{path}: unknown field {name!r}; did you mean {near[0]!r}?")
            continue
        want = (int, float) if types[name] is float else types[name]
        if isinstance(value, bool) or not isinstance(value, want):
            raise UserError(f"{path}: {name} must be {types[name].__name__}, got {json.dumps(value)}")
        least = 0 if name == "pad_token_id" else 1
        if types[name] is int and value < least:
            raise UserError(f"{path}: {name} must be at least {least}, got {value}")
        if name.endswith("_prob") and not 0 <= value < 1:
            raise UserError(f"{path}: {name} must be in [0, 1), got {value}")
    heads, hidden = (
        d.get("num_attention_heads", BertConfig.num_attention_heads),
        d.get("hidden_size", BertConfig.hidden_size),
    )
    if hidden % heads:
        raise UserError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")


# Training-mode speed paths (eval mode never takes them: it stays the plain path, equal to Hugging Face's).
# False gives the plain nn.Dropout / SDPA-dropout / separate q, k, v path, for comparisons (bench.py --plain, tests).
FAST = True


def attention_kind(device_type, training):
    """Which attention a forward pass takes, from the device type and the mode:
    'plain': eval mode (or FAST off): separate q, k, v and SDPA, Hugging Face's computation;
    'manual': training on a CPU: fused QKV, then q k^T, softmax and our cheap dropout by hand, because SDPA
        with dropout_p falls back to its math path there and draws a bernoulli_ mask of B x heads x T x T;
    'sdpa': training on a GPU: fused QKV, then SDPA with dropout_p, which its flash / memory-efficient
        kernels apply inside (no T x T tensor is materialized)."""
    if not (FAST and training):
        return "plain"
    return "manual" if device_type == "cpu" else "sdpa"


# A thread of training.side_by_side draws its dropout masks and ELECTRA's samples from a generator of its own,
# so a run does not depend on how its threads interleave; elsewhere they come from torch's default generator.
_thread = threading.local()


@contextlib.contextmanager
def thread_generator(generator):
    """Within it, this thread's dropout masks (our CPU dropout) and ELECTRA samples come from `generator`."""
    _thread.generator = generator
    try:
        yield
    finally:
        _thread.generator = None


def cheap_dropout(device_type):
    """Our 16-bit-mask dropout wins on a CPU (bernoulli_ is ~6-10 ns per element there); on a GPU F.dropout's
    fused kernel is faster than anything built on the host. Compiled code takes F.dropout too: a trace with
    dynamic shapes cannot size the random words, and inductor fuses F.dropout."""
    return FAST and device_type == "cpu" and not torch.compiler.is_compiling()


def random_int16(n, generator=None):
    """n uniform int16 (a CPU tensor): 64-bit words of numpy's SFC64, seeded from one draw of torch's generator
    (so torch.manual_seed and the RNG state a checkpoint keeps decide them). SFC64 fills words ~3x faster than
    torch's CPU generator (mt19937: ~5 ns a word on a Xeon, the dropout masks were ~9% of a fine-tuning step)."""
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)
    return torch.from_numpy(words.view(np.int16)[:n])


def dropout(x, p, training=True, residual=None):
    """Inverted dropout, as F.dropout, with masks from 16 random bits per element; with `residual`, residual +
    dropout(x) (post-LN BERT's sum before each LayerNorm) in one kernel (addcmul) on the CPU.

    On the CPU, F.dropout's bernoulli_ costs ~6-10 ns per element and was a third of a pretraining
    step; one 64-bit random word feeds 4 elements. Each element is dropped
    independently with probability round(p * 65536) / 65536 (within 8e-6 of p), and the survivors
    are scaled by 1 / (1 - that), so the expectation is exactly x."""
    thr = round(p * 65536)
    if not training or p == 0.0:
        y = x
    elif not cheap_dropout(x.device.type):
        y = F.dropout(x, p, True)
    elif thr >= 65536:
        y = x * 0.0
    else:
        bits = random_int16(x.numel(), getattr(_thread, "generator", None)).view(x.shape)
        # int16 is uniform on [-32768, 32767]; 0/1 straight into x's dtype, as a bool mask costs ~4x more to apply
        keep = torch.ge(bits, thr - 32768, out=torch.empty_like(x))
        scale = 65536 / (65536 - thr)  # a Python float: applied at full precision, also to bf16 x
        if residual is not None:
            return torch.addcmul(residual, x, keep, value=scale)
        y = x * keep * scale
    return y if residual is None else residual + y


class Dropout(nn.Module):
    """nn.Dropout through `dropout` above (no weights, so state dicts are unchanged)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.size(1)
        position_ids = torch.arange(T, device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x))


def gather_rows(x, rows):
    """x (B, T, H) at the positions rows (B, R) -> (B, R, H)."""
    return x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.size(-1)))


class SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.hidden_size % config.num_attention_heads == 0, (
            "hidden_size must be a multiple of num_attention_heads"
        )
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, mask, xq=None, packed=None):
        """-> (B, T, H); with xq, the inputs at some rows only (B, R, H): those rows' outputs (B, R, H), from queries
        at those rows and keys and values at every position (what the heads need of the last layer). packed
        (idx, B, T): x holds the real tokens only, (N, H), at the flat positions idx of (B, T) (Encoder's
        packing); without xq the output is packed the same way."""
        H = x.size(-1)
        hs = H // self.n_head
        B = x.size(0) if packed is None else packed[1]  # packed x is (N, H): B comes with the packing
        kind = attention_kind(x.device.type, self.training)
        fuse = kind != "plain"
        # the manual path's 1/sqrt(hs) goes into the query's weights (a power of 2 for hs 64: exact in bf16 too)
        c = 1.0 / math.sqrt(hs) if kind == "manual" else 1.0
        if xq is None:
            q, k, v = self.heads(x, (self.query, self.key, self.value), fuse, c, packed)  # 3 x (B, nh, T, hs)
        else:
            (q,) = self.heads(xq, (self.query,), fuse, c)  # (B, nh, R, hs)
            k, v = self.heads(x, (self.key, self.value), fuse, packed=packed)
        if kind == "manual":
            # SDPA with dropout_p takes its math path on the CPU and draws a bernoulli_ mask of B*nh*T*T;
            # the same math with our cheaper dropout on the attention probabilities. Without dropout this is still
            # the faster training step on a CPU (docs/speed.md: SDPA 0.63-0.71 s a pretraining step, this 0.54-0.57)
            att = q @ k.transpose(-2, -1)  # (B, nh, T, T), q already scaled
            if att.dtype != torch.float32 and att.size(-1) % 32:
                # torch's CPU softmax over bf16 rows whose length is not a multiple of 32 is 3x slower than over
                # fp32 ones, casts included (forward and backward over 128 x 4 heads: T 16 0.64 against 0.19 ms,
                # T 28 1.80 against 0.57; T 32 0.35 against 0.68, so whole vectors stay bf16; docs/speed.md)
                att = att.float()
            if mask is not None:  # an additive (B, 1, 1, T) bias: cheaper than masked_fill on (B, nh, T, T)
                att = att + torch.zeros(mask.shape, dtype=att.dtype, device=att.device).masked_fill_(
                    ~mask, torch.finfo(att.dtype).min
                )
            y = dropout(att.softmax(-1).to(v.dtype), self.dropout_p) @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
            )
        if packed is not None and xq is None:
            return y.transpose(1, 2).reshape(-1, H).index_select(0, packed[0])  # (N, H)
        return y.transpose(1, 2).reshape(B, q.size(2), H)

    def heads(self, x, projs, fuse, q_scale=1.0, packed=None):
        """The projections `projs` of x split into heads, n x (B, nh, T, hs). fuse: in one (H -> n*H) matmul
        instead of n (the weights stay HF-named Linears), with the first projection (the query) times q_scale
        folded into its weights and bias; else each Linear called as itself, as Hugging Face does, so that a
        replaced one (predict.py --int8's) is the one used. packed (idx, B, T), fused only: x is (N, H), the real
        tokens; the projections go back to (B, T) with zeros at the padding (keys there are masked, queries there
        unused)."""
        H = x.size(-1)
        if not fuse:  # eval mode: never packed
            B, T = x.shape[:2]
            return [p(x).view(B, T, self.n_head, H // self.n_head).transpose(1, 2) for p in projs]
        w, b = [p.weight for p in projs], [p.bias for p in projs]
        if q_scale != 1.0:
            w[0], b[0] = w[0] * q_scale, b[0] * q_scale
        w, b = (torch.cat(w), torch.cat(b)) if len(projs) > 1 else (w[0], b[0])
        y = F.linear(x, w, b)
        if packed is None:
            B, T = x.shape[:2]
        else:
            idx, B, T = packed
            y = y.new_zeros(B * T, y.size(-1)).index_copy(0, idx, y)
        return y.view(B, T, len(projs), self.n_head, H // self.n_head).permute(2, 0, 3, 1, 4)


class AddNorm(nn.Module):
    """dense -> dropout -> LayerNorm(residual + .): Hugging Face's BertSelfOutput and BertOutput."""

    def __init__(self, config, d_in):
        super().__init__()
        self.dense = nn.Linear(d_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(dropout(self.dense(x), self.dropout.p, self.training, residual=residual))


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = SelfAttention(config)
        self.output = AddNorm(config, config.hidden_size)

    def forward(self, x, mask, rows=None, packed=None):
        """rows: positions (B, R) whose outputs are wanted; None for every position. packed: x is (N, H), the real
        tokens (Encoder's packing), and rows index it."""
        if rows is None:
            return self.output(self.self(x, mask, packed=packed), x)
        xq = x.index_select(0, rows.reshape(-1)).view(*rows.shape, -1) if packed else gather_rows(x, rows)
        return self.output(self.self(x, mask, xq, packed), xq)


class Intermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, as Hugging Face's "gelu"


class Layer(nn.Module):
    """One post-LN encoder layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config, config.intermediate_size)

    def forward(self, x, mask, rows=None, packed=None):
        x = self.attention(x, mask, rows, packed)
        return self.output(self.intermediate(x), x)


# Encoder's packed row count is a multiple of this (or all B x T rows): train.py's parts of at most 2048 padded tokens
# then take at most 16 packed shapes. 512 gave back much of the padding packing saves (held to AVX2: a 12k-review
# run 1.15x slower, bench.py --task finetune 1.59x against 1.81x); 64 was no faster than 128 (docs/speed.md)
PACK_ROWS = 128


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([Layer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, mask, rows=None):
        """rows: positions (B, R); the last layer computes those only (B, R, H). No other position's output
        reaches a head (a classifier reads [CLS], the masked LM the masked positions), so the last layer's
        queries, attention output and FFN there are work thrown away.

        In training on a CPU (model.FAST) with rows and padding, the layers also skip the padding: x goes in packed,
        the real tokens only (N, H), and each layer's Linears, LayerNorms, GELU and dropout run on those N rows; the
        attention puts q, k, v back in (B, T) with zeros at the padding (masked keys: the real positions' outputs are
        the same). rows must be real positions (a classifier's [CLS], the masked positions, mask_pos's padding slots
        at 0). The packed rows are rounded up to a multiple of PACK_ROWS with padding positions, which keeps the
        number of matmul shapes small; a batch that would keep all its rows is not packed. Packing made fine-tuning
        ~1.4x faster in fp32 (AVX2) and a whole bf16 epoch 1.05-1.16x faster on AMX, 1.25x on a Zen 4 (AVX512_BF16);
        in bf16 it had lost when every batch kept its own row count and ran whole, not in train.py's parts
        (docs/speed.md)."""
        packed = None
        if FAST and self.training and rows is not None and mask is not None and x.device.type == "cpu":
            B, T, H = x.shape
            real = mask.reshape(-1)
            n = int(real.sum())
            n += -n % PACK_ROWS  # real positions, then padding ones up to a multiple of PACK_ROWS
            if n < real.numel():
                # each new n is a new matmul shape, and oneDNN keeps kernels per shape (a whole fp32 epoch reached
                # 2.15 GB with every n its own)
                idx = torch.argsort(~real, stable=True)[:n]
                rows = (real.cumsum(0) - 1).view(B, T).gather(1, rows)  # the rows' places among the real tokens
                x, packed = x.reshape(B * T, H).index_select(0, idx), (idx, B, T)
        for i, layer in enumerate(self.layer):
            x = layer(x, mask, rows if i == len(self.layer) - 1 else None, packed)
        return x


class Pooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))  # the [CLS] token


class Bert(nn.Module):
    """Hugging Face's BertModel: returns (sequence output (B, T, H), pooled output (B, H))."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.pooler = Pooler(config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, cls_only=False, rows=None):
        """cls_only: the sequence output holds the [CLS] position only, (B, 1, H); rows (B, R): the positions it
        holds, [CLS] first (the pooler reads row 0); the pooled output is the same either way."""
        B, T = input_ids.shape
        assert T <= self.config.max_position_embeddings, (
            f"sequence of {T} tokens exceeds {self.config.max_position_embeddings} positions"
        )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.view(B, 1, 1, T).bool()  # True = attend; pads are never attended to
        x = self.embeddings(input_ids, token_type_ids)
        if FAST and self.training and torch.is_autocast_enabled(x.device.type):
            # the residual stream in bf16/fp16 too: an fp32 one makes every Linear cast its input (and its gradient
            # back)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if cls_only:
            rows = torch.zeros(B, 1, dtype=torch.long, device=input_ids.device)
        x = self.encoder(x, mask, rows)
        return x, self.pooler(x)


class PredictionHeadTransform(nn.Module):
    def __init__(self, config, d_in=None):
        super().__init__()
        self.dense = nn.Linear(d_in or config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transform = PredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied to word_embeddings
        self.bias = self.decoder.bias  # Hugging Face keeps the bias under both names

    def forward(self, x):
        return self.decoder(self.transform(x))


class PreTrainingHeads(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = LMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def init_weights(module, std):
    """BERT's initialisation: N(0, std) for dense and embedding weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertForPreTraining(nn.Module):
    """BERT with the masked LM and next sentence prediction heads."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = Bert(config)
        self.cls = PreTrainingHeads(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, mask_pos=None):
        """Returns MLM logits (B, P, V) at `mask_pos` (B, P), or (B, T, V) at every token, and NSP logits (B, 2)."""
        if FAST and self.training and mask_pos is not None:
            # the last layer only where a head reads: [CLS] for NSP, the masked positions (~15% of T) for the MLM;
            # the same logits and gradients as below
            rows = torch.cat([torch.zeros_like(mask_pos[:, :1]), mask_pos], 1)
            x, pooled = self.bert(input_ids, token_type_ids, attention_mask, rows=rows)
            return self.cls.predictions(x[:, 1:]), self.cls.seq_relationship(pooled)
        x, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        if mask_pos is not None:
            # the MLM head only where there is something to predict: P is ~15% of T
            x = gather_rows(x, mask_pos)
        return self.cls.predictions(x), self.cls.seq_relationship(pooled)


def generator_config(config, hidden_ratio=0.25):
    """ELECTRA's generator (google-research/electra get_generator_config): the discriminator's config with
    hidden_ratio of its hidden size, 4x that as intermediate size, and heads of about 64 dimensions."""
    hidden = max(1, round(config.hidden_size * hidden_ratio))
    heads = max(1, hidden // 64)
    while hidden % heads:  # e.g. hidden 200: 3 heads do not divide it, 2 do
        heads -= 1
    return replace(config, hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads)


def sample_tokens(logits, generator=None):
    """One token per row of `logits` (..., V) drawn from softmax(logits) by the Gumbel-max trick, as ELECTRA
    samples; no gradient flows through the draw. `generator`: the thread's (thread_generator) when None."""
    generator = generator if generator is not None else getattr(_thread, "generator", None)
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    return (logits.detach().float() - torch.log(-torch.log(u))).argmax(-1)


def replace_tokens(input_ids, mask_pos, mask_label, sampled):
    """The discriminator's input and labels: the original text (mask_label put back at mask_pos) with the
    sampled tokens at the masked positions -> (ids (B, T), replaced (B, T) bool). A sample equal to the
    original is not a replacement (ELECTRA's labels); unmasked tokens and pads never are."""
    valid = mask_label != -100  # padded mask slots point at position 0 ([CLS]) and write it back unchanged
    at_pos = input_ids.gather(1, mask_pos)  # (B, P)
    original = input_ids.scatter(1, mask_pos, torch.where(valid, mask_label, at_pos))
    fake = original.scatter(1, mask_pos, torch.where(valid, sampled, at_pos))
    return fake, fake != original


class ElectraGenerator(nn.Module):
    """The small masked LM's encoder. It reads the discriminator's embeddings (passed in, not owned: one
    tensor for both, and `bert.*` stays the only copy), projected down to its own hidden size."""

    def __init__(self, config, gen_config):
        super().__init__()
        self.embeddings_project = nn.Linear(config.hidden_size, gen_config.hidden_size)
        self.encoder = Encoder(gen_config)

    def forward(self, embedded, mask, rows=None):
        """-> (B, T, Hg), or (B, R, Hg) at rows (B, R) only, which the last layer computes alone."""
        x = self.embeddings_project(embedded)  # (B, T, H) -> (B, T, Hg)
        if FAST and self.training and torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))  # the residual stream in bf16/fp16, as in Bert
        return self.encoder(x, mask, rows)


class DiscriminatorHead(nn.Module):
    """Hugging Face's ElectraDiscriminatorPredictions: dense -> GELU -> one logit per token."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, x):
        return self.dense_prediction(F.gelu(self.dense(x))).squeeze(-1)  # (B, T, H) -> (B, T)


class ElectraForPreTraining(nn.Module):
    """Replaced-token detection (Clark et al. 2020): a small generator fills the masked positions with samples
    from its masked-LM softmax, the discriminator (`bert`, our BERT encoder: what train.py fine-tunes) says
    for every token whether it was replaced. Word, position and token-type embeddings are shared, and the
    generator's decoder is tied to the word embeddings, as in google-research/electra."""

    def __init__(self, config, gen_config):
        super().__init__()
        self.config, self.gen_config = config, gen_config
        self.bert = Bert(config)
        # replaced-token detection never reads the pooled [CLS]; frozen, so that DDP waits for no gradient of it
        self.bert.pooler.requires_grad_(False)
        self.generator = ElectraGenerator(config, gen_config)
        self.generator_predictions = PredictionHeadTransform(config, d_in=gen_config.hidden_size)  # Hg -> H
        self.generator_lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.discriminator_predictions = DiscriminatorHead(config)
        self.apply(lambda m: init_weights(m, config.initializer_range))
        self.generator_lm_head.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids, token_type_ids, attention_mask, mask_pos, mask_label, generator=None):
        """input_ids as data.py masked them -> generator logits (B, P, V) at mask_pos, discriminator logits
        (B, T) on the corrupted text, and which tokens were replaced (B, T)."""
        B, T = input_ids.shape
        mask = attention_mask.view(B, 1, 1, T).bool()
        embedded = self.bert.embeddings(input_ids, token_type_ids)
        if FAST and self.training:  # the generator's last layer at the masked positions only: the same outputs
            h = self.generator(embedded, mask, mask_pos)  # (B, P, Hg)
        else:
            h = self.generator(embedded, mask)  # (B, T, Hg)
            h = gather_rows(h, mask_pos)  # (B, P, Hg)
        gen_logits = self.generator_lm_head(self.generator_predictions(h))  # (B, P, V)
        fake, replaced = replace_tokens(input_ids, mask_pos, mask_label, sample_tokens(gen_logits, generator))
        x, _ = self.bert(fake, token_type_ids, attention_mask)  # (B, T, H)
        return gen_logits, self.discriminator_predictions(x), replaced


class BertForSequenceClassification(nn.Module):
    """BERT with a linear classifier on the pooled [CLS] output (sentiment: 2 labels)."""

    def __init__(self, config, num_labels=2):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = Bert(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.apply(lambda m: init_weights(m, config.initializer_range))

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, cls_only=None):
        """cls_only: compute the last layer at [CLS] only (the same logits, a sixth less work for config_half);
        by default in training's speed path, while eval mode stays Hugging Face's full computation unless asked
        (predict.py and train.py's evaluation ask)."""
        if cls_only is None:
            cls_only = FAST and self.training
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, cls_only=cls_only)
        return self.classifier(self.dropout(pooled))  # (B, num_labels)


def layer_depth(name, num_layers):
    """How deep a weight sits, for layer-wise LR decay: 0 for the embeddings, i + 1 for encoder layer i,
    num_layers + 1 for the pooler, num_layers + 2 for the rest (the task's head), as google-research/electra."""
    parts = name.split(".")
    if "embeddings" in parts:
        return 0
    if "layer" in parts and parts[parts.index("layer") - 1] == "encoder":
        return int(parts[parts.index("layer") + 1]) + 1
    return num_layers + 1 if "pooler" in parts else num_layers + 2


def configure_optimizer(model, lr, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6, device_type="cpu", layer_decay=1.0):
    """AdamW with decay on matrices and embeddings only: biases and LayerNorm weights (1-D) are not decayed.

    layer_decay < 1: layer-wise LR decay (ELECTRA's fine-tuning, Clark et al. 2020): a weight at depth d
    (`layer_depth`) trains at lr x layer_decay ** (top - d), the head at lr and the embeddings lowest. 1: one LR."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight is listed once
    if layer_decay == 1.0:  # one depth: the two groups of a single LR (a model without a BERT config too)
        depth = {n: 0 for n, _ in named}
    else:
        depth = {n: layer_depth(n, model.config.num_hidden_layers) for n, _ in named}
    top = max(depth.values(), default=0)
    groups = []
    for d in sorted(set(depth.values()), reverse=True):  # the head's first: get_last_lr()[0] follows lr
        at_d = [p for n, p in named if depth[n] == d]
        lr_d = lr * layer_decay ** (top - d)
        groups += [
            {"params": [p for p in at_d if p.dim() >= 2], "weight_decay": weight_decay, "lr": lr_d},
            {"params": [p for p in at_d if p.dim() < 2], "weight_decay": 0.0, "lr": lr_d},
        ]
    # fused: one kernel over all parameters; on a CPU too (10.6 vs 32 ms per config_half step, a twentieth of a
    # fine-tuning step)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device_type in ("cuda", "cpu"))


def flops_per_token(config, T, training=True):
    """Matmul FLOPs per token of the encoder at sequence length T: 2 per weight (QKV, output, FFN) plus
    q k^T and att @ v; x3 for a training step (the backward pass is twice the forward). Heads left out."""
    H, L = config.hidden_size, config.num_hidden_layers
    forward = L * (2 * (4 * H * H + 2 * H * config.intermediate_size) + 4 * T * H)
    return 3 * forward if training else forward


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
