"""Checkpoint I/O shared by pretrain.py, train.py and predict.py.

A checkpoint is a plain dict of tensors, numbers and strings, loaded with
`torch.load(weights_only=True)` so that a foreign .pth cannot run code. Writes are atomic:
a temporary file, flushed and fsynced, then renamed over the old one.

`load_checkpoint` also reads a Hugging Face BERT directory (config.json + model.safetensors or
pytorch_model.bin, as `save_pretrained` or export.py write it) into the same dict shape, so every
script that takes a checkpoint takes such a directory too.

A run holds `lock_checkpoint` on the checkpoints it resumes from and writes, so two runs never share one.
"""

import fcntl
import glob
import io
import json
import os
import pickle
import re
import signal
import socket
import zipfile

import torch

from errors import UserError, require_file
from model import BertConfig, BertForPreTraining, check_config_fields

# config fields that change the shape or the function of the weights
ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_act",
    "layer_norm_eps",
)


_saves = 0
_locks = {}  # checkpoint path -> the open lock file this process holds on it


def lock_checkpoint(path, flag="--save"):
    """Take an exclusive lock on checkpoint `path` (`fcntl.flock` on `path.lock`, which names the holder), or
    a one-line error naming the run that has it. The kernel drops the lock when the process ends, however it
    ends (a SIGKILL too), so there is never a stale lock to clear. Holding it, this process is the only
    writer: temporary files that killed writers left beside `path` are removed. A second call in the same
    process (a test or a notebook running main() again) takes the lock over from the first."""
    key = os.path.abspath(path)
    if key in _locks:
        _locks.pop(key).close()
    lock_path = f"{path}.lock"
    try:
        os.makedirs(os.path.dirname(key), exist_ok=True)
        f = open(lock_path, "a+")  # noqa: SIM115 (open as long as the lock is held)
    except OSError as e:
        raise UserError(f"cannot create {lock_path} ({e.strerror}); pass a --save in a writable directory") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "starting"
        f.close()
        raise UserError(f"{path} is in use by another run ({holder}); wait for it or pass another {flag}") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _locks[key] = f
    for stale in glob.glob(glob.escape(path) + ".tmp.*"):
        if re.fullmatch(r"\.tmp\..+\.\d+", stale[len(path) :]):  # host.pid: save_checkpoint's, not another's lock
            os.remove(stale)
    return path


def save_checkpoint(path, state):
    """Write `state` to `path` atomically. The previous checkpoint stays whole until the rename: a kill
    at any moment leaves either the old file or the new one, never a mix (a stale temporary file at most).
    The temporary file is this writer's own (host and pid in its name), so two writers can never rename
    each other's file."""
    global _saves
    _saves += 1
    tmp = f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    with open(tmp, "wb") as f:
        if os.environ.get("BERT_KILL_IN_SAVE") == str(_saves):  # the fault tests: SIGKILL halfway through this save
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # make the rename itself durable (the directory entry), so a power cut cannot bring the old file back
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Hugging Face config values our model does not compute, with the one value it does
HF_ONLY = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
UNREADABLE = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)  # truncated or foreign


def load_checkpoint(path, how="run `python pretrain.py` to make one"):
    require_file(path, how)
    if os.path.isdir(path):
        return load_hf_dir(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); {how}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no model/config inside); {how}")
    return state


def read_hf_weights(path):
    """The state dict in a Hugging Face directory: model.safetensors first (as transformers does), else
    pytorch_model.bin."""
    st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{st} needs the safetensors package: pip install safetensors") from None
        try:
            return load_file(st)
        except (SafetensorError, OSError) as e:
            raise UserError(f"{st} is not readable ({e})") from None
    if os.path.exists(pt):
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except UNREADABLE as e:
            raise UserError(f"{pt} is not readable ({type(e).__name__})") from None
    raise UserError(f"{path} has neither model.safetensors nor pytorch_model.bin (sharded weights are not read)")


def load_hf_dir(path):
    """A Hugging Face BERT directory -> {"model", "config", "vocab_size"}, with our (= Hugging Face's) weight names."""
    config_path = require_file(os.path.join(path, "config.json"), "a Hugging Face model directory has one")
    try:
        with open(config_path, encoding="utf-8") as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not JSON ({e})") from None
    check_config_fields(hf, config_path)
    for name, ours in HF_ONLY.items():
        if hf.get(name, ours) != ours:
            raise UserError(f"{config_path} has {name}={hf[name]!r}; our BERT computes only {name}={ours!r}")
    weights = {}
    for k, v in read_hf_weights(path).items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )  # pre-2019 names
        if k.startswith(("embeddings.", "encoder.", "pooler.")):
            k = "bert." + k  # saved from a bare BertModel
        weights[k] = v.float() if v.is_floating_point() else v
    word = weights.get("bert.embeddings.word_embeddings.weight")
    if word is None:
        raise UserError(f"{path} has no bert.embeddings.word_embeddings.weight; is it a BERT model?")
    config = BertConfig.from_dict(hf, vocab_size=len(word))  # the weights decide

    # The MLM decoder is tied: its weight is the word embedding and its bias is cls.predictions.bias,
    # so save_pretrained stores each once and we restore the other name.
    if "cls.predictions.bias" in weights or "cls.predictions.decoder.bias" in weights:
        weights["cls.predictions.decoder.weight"] = word
        weights.setdefault("cls.predictions.bias", weights.get("cls.predictions.decoder.bias"))
        weights.setdefault("cls.predictions.decoder.bias", weights["cls.predictions.bias"])
    if "classifier.weight" in weights and len(weights["classifier.weight"]) != 2:
        del (
            weights["classifier.weight"],
            weights["classifier.bias"],
        )  # not our 2 labels: train.py starts a new classifier

    with torch.device("meta"):  # names and shapes only, no memory
        ours = {k: v.shape for k, v in BertForPreTraining(config).state_dict().items()}
    ours |= {"classifier.weight": (2, config.hidden_size), "classifier.bias": (2,)}
    missing = [k for k in ours if k.startswith("bert.") and k not in weights]
    if missing:
        raise UserError(f"{path} has no weight {missing[0]} ({len(missing)} of the encoder's are missing)")
    # other heads (question answering, token classification) and buffers (position_ids) are left out
    weights = {k: v for k, v in weights.items() if k in ours}
    for k, v in weights.items():
        if v.shape != ours[k]:
            raise UserError(f"{path}: {k} has shape {tuple(v.shape)} but its config.json makes it {tuple(ours[k])}")
    state = {"model": weights, "config": config.to_dict(), "vocab_size": config.vocab_size}
    # export.py keeps train.py's --n_seq as the tokenizer's model_max_length; predict.py cuts reviews there
    n_seq = read_json(os.path.join(path, "tokenizer_config.json")).get("model_max_length")
    if isinstance(n_seq, int) and 2 < n_seq <= config.max_position_embeddings:  # the Hub's 1e30 means "no limit"
        state["n_seq"] = n_seq
    return state


def read_json(path):
    """A JSON object from `path`, {} when there is none or it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def check_config(state, config, path, config_path=None):
    """One-line error naming the first field where the checkpoint and the current config differ."""
    saved = BertConfig.from_dict(state["config"])
    for name in ARCH_FIELDS:
        a, b = getattr(saved, name), getattr(config, name)
        if a != b:
            if name == "vocab_size":
                raise UserError(
                    f"{path} was trained with a vocabulary of {a} pieces but the vocab file has {b}; "
                    "pass the --vocab it was trained with"
                )
            where = f" in {config_path}" if config_path else ""
            raise UserError(
                f"{path} has {name}={a} but the config{where} has {name}={b}; pass the --config it was trained with"
            )


def encoder_weights(state):
    """The `bert.*` weights of a pretraining or fine-tuning checkpoint (the heads are left out)."""
    return {k: v for k, v in state["model"].items() if k.startswith("bert.")}


def restore_training(state, model, optimizer, scheduler, scaler):
    """Load a training checkpoint's weights and its optimizer, LR scheduler and fp16 grad-scaler states."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
