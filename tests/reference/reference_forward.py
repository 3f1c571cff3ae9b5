#!/usr/bin/python3
"""Independent float64 reference forward pass for Llama / Phi-3 checkpoints.

Written from the model definition (Hugging Face LlamaForCausalLM /
Phi3ForCausalLM), not from pdserve's C++, with nothing but numpy:

    x = embed_tokens[ids]
    per layer:
        h = rmsnorm(x) * input_layernorm            rmsnorm(x) = x / sqrt(mean(x^2) + eps)
        q, k, v = h Wq^T, h Wk^T, h Wv^T             (or split of Phi-3's fused qkv_proj)
        q, k = rope(q), rope(k)                      rotate_half pairs (x[i], x[i + hd/2]),
                                                     angle = position * theta^(-2i/hd)
        a = softmax(q k^T / sqrt(hd) + causal mask) v, query head h reads kv head h // (H / KVH)
        x = x + a Wo^T
        h = rmsnorm(x) * post_attention_layernorm
        x = x + (silu(h Wgate^T) * (h Wup^T)) Wdown^T
    hidden = rmsnorm(x) * norm;  logits = hidden lm_head^T (lm_head = embed_tokens when tied)

Everything runs in float64 on the whole sequence at once (no KV cache), and
greedy generation recomputes the whole sequence every step, so it shares no
shortcut with the code under test.

Usage (from the repository root):
    /usr/bin/python3 tests/reference/reference_forward.py \
        [--model models/stories260K] [--out tests/data/golden]
writes <out>/stories260K_forward.json and one .f32 logits file per case (see
tests/reference/README.md).
"""

import argparse
import hashlib
import json
import os
import struct
import sys

import numpy as np

# Cases: a name and its prompt ids. "once_upon" is BOS + "Once upon a time"
# (ids from the model's README); "random40" is BOS + 39 ids drawn once with
# numpy.random.RandomState(20240611).randint(3, 512, 39), written out here so
# the prompt never depends on numpy's generator.
CASES = {
    "once_upon": [1, 403, 407, 261, 378],
    "random40": [
        1, 229, 169, 283, 488, 439, 20, 432, 461, 57, 325, 63, 261, 423, 115, 65, 374, 68, 91,
        330, 403, 347, 163, 219, 292, 100, 214, 343, 163, 434, 22, 181, 302, 311, 388, 115, 92,
        464, 39, 40,
    ],
}
NUM_GREEDY = 64


# ---- safetensors --------------------------------------------------------------

def read_safetensors(path):
    """Returns {name: float64 ndarray}. Format: u64 little-endian header size N,
    N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}}, data."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_size])
    data = memoryview(blob)[8 + header_size:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            values = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dtype == "F16":
            values = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dtype == "BF16":
            # bfloat16 is the top 16 bits of a float32.
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            values = bits.view(np.float32).astype(np.float64)
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        tensors[name] = values.reshape(info["shape"])
    return tensors


def safetensors_files(model_dir):
    """The checkpoint's files: the shards its index names, or model.safetensors."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def load_tensors(model_dir):
    tensors = {}
    for name in safetensors_files(model_dir):
        tensors.update(read_safetensors(os.path.join(model_dir, name)))
    return tensors


# ---- model --------------------------------------------------------------------

class Model:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        if config.get("rope_scaling") is not None:
            raise ValueError("rope_scaling is not supported by this reference")
        self.hidden = config["hidden_size"]
        self.num_layers = config["num_hidden_layers"]
        self.num_heads = config["num_attention_heads"]
        self.num_kv_heads = config.get("num_key_value_heads") or self.num_heads
        self.head_dim = config.get("head_dim") or self.hidden // self.num_heads
        self.eps = config["rms_norm_eps"]
        self.theta = config.get("rope_theta", 10000.0)
        self.vocab = config["vocab_size"]
        t = load_tensors(model_dir)
        self.embed = t["model.embed_tokens.weight"]
        self.norm = t["model.norm.weight"]
        if config.get("tie_word_embeddings", False) or "lm_head.weight" not in t:
            self.lm_head = self.embed
        else:
            self.lm_head = t["lm_head.weight"]
        q_rows = self.num_heads * self.head_dim
        kv_rows = self.num_kv_heads * self.head_dim
        self.layers = []
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            if p + "self_attn.qkv_proj.weight" in t:  # Phi-3: fused, q then k then v
                qkv = t[p + "self_attn.qkv_proj.weight"]
                wq, wk, wv = qkv[:q_rows], qkv[q_rows:q_rows + kv_rows], qkv[q_rows + kv_rows:]
            else:
                wq = t[p + "self_attn.q_proj.weight"]
                wk = t[p + "self_attn.k_proj.weight"]
                wv = t[p + "self_attn.v_proj.weight"]
            if p + "mlp.gate_up_proj.weight" in t:  # Phi-3: gate rows first, then up
                gate_up = t[p + "mlp.gate_up_proj.weight"]
                half = gate_up.shape[0] // 2
                wg, wu = gate_up[:half], gate_up[half:]
            else:
                wg = t[p + "mlp.gate_proj.weight"]
                wu = t[p + "mlp.up_proj.weight"]
            self.layers.append(dict(
                input_norm=t[p + "input_layernorm.weight"],
                wq=wq, wk=wk, wv=wv, wo=t[p + "self_attn.o_proj.weight"],
                post_norm=t[p + "post_attention_layernorm.weight"],
                wg=wg, wu=wu, wd=t[p + "mlp.down_proj.weight"]))

    def rmsnorm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x, positions):
        """x: [n, heads, hd]. HF rotate_half: x*cos + [-x2, x1]*sin."""
        hd = self.head_dim
        inv_freq = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # [hd/2]
        angles = positions[:, None].astype(np.float64) * inv_freq[None, :]     # [n, hd/2]
        cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]         # [n, 1, hd]
        sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        rotated = np.concatenate([-x2, x1], axis=-1)
        return x * cos + rotated * sin

    def attention(self, q, k, v):
        """q: [n, H, hd]; k, v: [n, KVH, hd]; causal; returns [n, H*hd]."""
        n = q.shape[0]
        group = self.num_heads // self.num_kv_heads
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        out = np.empty((n, self.num_heads, self.head_dim))
        for h in range(self.num_heads):
            g = h // group
            scores = q[:, h, :] @ k[:, g, :].T / np.sqrt(self.head_dim) + mask
            scores -= scores.max(axis=-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=-1, keepdims=True)
            out[:, h, :] = p @ v[:, g, :]
        return out.reshape(n, -1)

    def forward(self, ids, residuals=None):
        """Returns (final hidden [n, hidden] after the final norm, logits [n, vocab]).
        When `residuals` is a list, appends the residual stream x [n, hidden]
        after the embedding and after every decoder layer (before the final
        norm) to it: num_layers + 1 arrays."""
        ids = np.asarray(ids)
        n = len(ids)
        positions = np.arange(n)
        x = self.embed[ids].copy()
        if residuals is not None:
            residuals.append(x.copy())
        for layer in self.layers:
            h = self.rmsnorm(x, layer["input_norm"])
            q = (h @ layer["wq"].T).reshape(n, self.num_heads, self.head_dim)
            k = (h @ layer["wk"].T).reshape(n, self.num_kv_heads, self.head_dim)
            v = (h @ layer["wv"].T).reshape(n, self.num_kv_heads, self.head_dim)
            q, k = self.rope(q, positions), self.rope(k, positions)
            x = x + self.attention(q, k, v) @ layer["wo"].T
            h = self.rmsnorm(x, layer["post_norm"])
            gate, up = h @ layer["wg"].T, h @ layer["wu"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ layer["wd"].T
            if residuals is not None:
                residuals.append(x.copy())
        hidden = self.rmsnorm(x, self.norm)
        return hidden, hidden @ self.lm_head.T


# ---- tokenizer (decode only, for a human-readable golden text) -------------------

def read_varint(data, pos):
    result, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def proto_fields(data):
    """Yields (field number, wire type, value) of a protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def sentencepiece_pieces(path):
    """ModelProto field 1 is the repeated SentencePiece {1: piece, 3: type}."""
    with open(path, "rb") as f:
        data = f.read()
    pieces = []
    for field, _, value in proto_fields(data):
        if field == 1:
            piece, kind = "", 1
            for sub_field, _, sub_value in proto_fields(value):
                if sub_field == 1:
                    piece = sub_value.decode("utf-8")
                elif sub_field == 3:
                    kind = sub_value
            pieces.append((piece, kind))
    return pieces


def decode(pieces, ids):
    """SentencePiece decoding: control pieces vanish, <0xNN> byte pieces join
    into UTF-8, U+2581 is a space, and the leading space is dropped."""
    out = bytearray()
    for i in ids:
        piece, kind = pieces[i]
        if kind == 3:  # CONTROL (<s>, </s>)
            continue
        if kind == 6:  # BYTE
            out.append(int(piece[3:5], 16))
        else:
            out += piece.replace("\u2581", " ").encode("utf-8")
    text = out.decode("utf-8", errors="replace")
    return text[1:] if text.startswith(" ") else text


# ---- golden files ---------------------------------------------------------------

HIDDEN_STATES_CASE = "once_upon"
NUM_TOP_NEXT = 10


def tensor_table_parameters(model_dir):
    """Elements over every tensor of the checkpoint, from the safetensors
    headers alone (the shapes), each tensor once."""
    total = 0
    for name in safetensors_files(model_dir):
        with open(os.path.join(model_dir, name), "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        for tensor, info in header.items():
            if tensor != "__metadata__":
                total += int(np.prod(info["shape"], dtype=np.int64))
    return total


def hidden_states_golden(model, model_dir, prefix, pieces):
    """Per-layer hidden states of one prompt, every position, in float64:
    "-1" is the embeddings output, "l" the residual stream after decoder
    layer l (before the final norm); "final_norm" the final RMSNorm output
    (HF last_hidden_state[0]); the most likely next tokens after the last
    position with softmax probabilities (computed in float64); and the
    parameter count of the tensor table."""
    prompt = CASES[HIDDEN_STATES_CASE]
    residuals = []
    hidden, logits = model.forward(prompt, residuals)
    last = logits[-1] - logits[-1].max()
    probs = np.exp(last) / np.exp(last).sum()
    top = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:NUM_TOP_NEXT]
    return {
        "description": "Float64 hidden states of " + prefix + " for one prompt by "
                       "tests/reference/reference_forward.py; see tests/reference/README.md.",
        "case": HIDDEN_STATES_CASE,
        "prompt": prompt,
        "hidden_size": model.hidden,
        "num_layers": model.num_layers,
        "layers": {str(i - 1): [[float(v) for v in row] for row in r]
                   for i, r in enumerate(residuals)},
        "final_norm": [[float(v) for v in row] for row in hidden],
        "top_next_tokens": [{"id": int(i), "probability": float(probs[i]),
                             "piece": pieces[i][0]} for i in top],
        "parameter_count": tensor_table_parameters(model_dir),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--model", default=os.path.join(root, "models", "stories260K"))
    parser.add_argument("--out", default=os.path.join(root, "tests", "data", "golden"))
    args = parser.parse_args()

    model = Model(args.model)
    pieces = sentencepiece_pieces(os.path.join(args.model, "tokenizer.model"))
    prefix = os.path.basename(os.path.normpath(args.model))
    golden = {
        "description": "Float64 reference forward pass of " + prefix +
                       " by tests/reference/reference_forward.py; see tests/reference/README.md.",
        "model": os.path.relpath(args.model, root),
        "cases": [],
    }
    for name, prompt in CASES.items():
        tokens = list(prompt)
        margins = []
        for _ in range(NUM_GREEDY):
            _, logits = model.forward(tokens)
            top2 = np.sort(logits[-1])[-2:]
            margins.append(float(top2[1] - top2[0]))
            tokens.append(int(np.argmax(logits[-1])))  # lowest id on ties
        generated = tokens[len(prompt):]
        # Logits of every position of prompt + continuation (teacher-forced):
        # rows [0, len(prompt)) belong to the prompt, row len(prompt)-1+i is
        # the distribution generated[i] was chosen from.
        hidden, logits = model.forward(tokens)
        prompt_hidden, _ = model.forward(prompt)
        assert np.allclose(prompt_hidden, hidden[:len(prompt)], atol=1e-12)  # causal
        logits_file = f"{prefix}_{name}_logits.f32"
        raw = logits.astype("<f4").tobytes()
        with open(os.path.join(args.out, logits_file), "wb") as f:
            f.write(raw)
        golden["cases"].append({
            "name": name,
            "prompt": prompt,
            "greedy_tokens": generated,
            "greedy_text": decode(pieces, generated),
            "prompt_and_greedy_text": decode(pieces, tokens),
            "min_greedy_margin": min(margins),
            "final_hidden_last": [float(x) for x in prompt_hidden[-1]],
            "logits_file": logits_file,
            "logits_shape": list(logits.shape),
            "logits_dtype": "float32 little-endian, row-major",
            "logits_sha256": hashlib.sha256(raw).hexdigest(),
        })
        print(f"{name}: {len(prompt)} prompt tokens, greedy margin >= {min(margins):.4f}: "
              f"{decode(pieces, tokens)!r}")
    with open(os.path.join(args.out, f"{prefix}_forward.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    states = hidden_states_golden(model, args.model, prefix, pieces)
    with open(os.path.join(args.out, f"{prefix}_hidden_states.json"), "w") as f:
        json.dump(states, f, indent=1)
        f.write("\n")
    print(f"{HIDDEN_STATES_CASE}: hidden states of {len(states['layers'])} layers, top next "
          f"{[(t['id'], round(t['probability'], 4)) for t in states['top_next_tokens'][:5]]}, "
          f"{states['parameter_count']} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
