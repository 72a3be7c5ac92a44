"""--step_threads: a step's micro-batches in threads side by side (training.side_by_side) are the same step as one
micro-batch after the other, each thread draws its dropout masks from its own generator, and a run with threads
resumes to the very weights of an uninterrupted one."""

import contextlib
import signal
import time
import types

import pytest
import torch
from conftest import MICRO0, assert_same_state, micro_setup, wait_for
from test_resume import args_for, finetune_args, start

import model as model_py
import pretrain
import train
from errors import UserError
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, ElectraForPreTraining
from store import PretrainStore, collate_pretrain
from training import side_by_side, step_threads

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_spm):
    return micro_setup(tmp_path_factory.mktemp("threads"), sample_spm)


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_close_grads(a, b):
    assert a.keys() == b.keys()
    for k in a:  # the same sums in another order: fp32 rounding only (a share left out or counted twice is not)
        assert (a[k] - b[k]).abs().max() <= 1e-4 * a[k].abs().max() + 1e-6, k


def pretrain_batches(setup, sizes):
    store = PretrainStore(setup["instances"])
    items, out = [store[i] for i in range(sum(sizes))], []
    for n in sizes:
        out.append(collate_pretrain(items[:n]))
        items = items[n:]
    return out


@pytest.mark.parametrize("objective", ["mlm", "electra"])
@pytest.mark.parametrize("sizes,threads", [([4, 4, 4, 4], 2), ([6, 2, 5], 2), ([8], 2), ([2], 3)])
def test_pretraining_step_side_by_side_is_the_same_step(setup, objective, sizes, threads):
    """Dropout off, generator draws made from a fixed seed per thread: the threads' gradients add up to one
    after the other's, whether the shares are whole micro-batches ([4, 4, 4, 4], unequal [6, 2, 5]) or cut along
    the batch ([8]; [2] with 3 threads gives 2 pieces)."""
    config = BertConfig(**{**MICRO0, "vocab_size": 1007})
    torch.manual_seed(0)
    if objective == "electra":
        m = ElectraForPreTraining(config, model_py.generator_config(config, 0.25)).train()
        # the generator's samples are random: make them its argmax, the same in any thread
        m_sample = model_py.sample_tokens
        model_py.sample_tokens = lambda logits, generator=None: logits.argmax(-1)
    else:
        m = BertForPreTraining(config).train()
    try:
        micro = pretrain_batches(setup, sizes)
        counts = [
            sum(int((b["mask_label"] != -100).sum()) for b in micro),
            sum(len(b["is_next"]) for b in micro),
            sum(int(b["attention_mask"].sum()) for b in micro),
        ]
        args = types.SimpleNamespace(objective=objective, disc_weight=50.0)
        step = lambda mb: pretrain.train_step(m, mb, counts, args, 1, CPU, contextlib.nullcontext(), None)
        one = step(micro)
        g1 = grads(m)
        m.zero_grad(set_to_none=True)
        two = side_by_side(step, micro, threads)
        g2 = grads(m)
    finally:
        if objective == "electra":
            model_py.sample_tokens = m_sample
    assert torch.allclose(one, two, rtol=1e-5)  # the logged sums: losses, correct counts, tokens
    assert_close_grads(g1, g2)


def test_fine_tuning_step_side_by_side_is_the_same_step():
    """train.py's step with soft targets (self-training) and labels, one micro-batch of 9 reviews cut in two."""
    config = BertConfig(**{**MICRO0, "vocab_size": 1007})
    torch.manual_seed(0)
    m = BertForSequenceClassification(config).train()
    ids = torch.randint(5, 1007, (9, 12))
    ids[3:, 8:] = 0  # some padding
    b = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.randint(0, 2, (9,)),
         "soft": torch.rand(9)}
    step = lambda ps: train.train_step(m, ps, 9, 1, CPU, contextlib.nullcontext(), None)
    one = step([b])
    g1 = grads(m)
    m.zero_grad(set_to_none=True)
    two = side_by_side(step, [b], 2)
    assert torch.allclose(one, two) and two[1] == 9
    assert_close_grads(g1, grads(m))


def test_the_shares_add_up_in_one_order_whichever_thread_finishes_first():
    """Three micro-batches on 2 threads, so one thread's share holds two: the step's gradient is the same to the
    bit when that thread finishes first and when it finishes last (threads adding into .grad as they finished
    summed (a + b) + c one time and (b + c) + a the other)."""
    config = BertConfig(**{**MICRO0, "vocab_size": 1007})
    torch.manual_seed(0)
    m = BertForSequenceClassification(config).train()
    micro = []
    for n in (8, 6, 5):  # shares: [8] and [6, 5]
        ids = torch.randint(5, 1007, (n, 12))
        micro.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (n,))})

    def run(late):  # the thread whose share has `late` micro-batches starts 0.3 s after the other
        def step(ps):
            if len(ps) == late:
                time.sleep(0.3)
            return train.train_step(m, ps, 19, 1, CPU, contextlib.nullcontext(), None)

        m.zero_grad(set_to_none=True)
        side_by_side(step, micro, 2)
        return grads(m)

    first, last = run(1), run(2)
    assert first.keys() == last.keys()
    assert all(torch.equal(first[k], last[k]) for k in first)


def test_a_thread_draws_its_masks_from_its_own_generator():
    """Within thread_generator(g) dropout and ELECTRA's samples come from g, not from torch's default generator,
    so threads side by side do not take each other's draws."""
    x = torch.ones(1000)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with model_py.thread_generator(torch.Generator().manual_seed(5)):
        a = model_py.dropout(x, 0.5)
        s = model_py.sample_tokens(torch.zeros(50, 8))
    assert torch.equal(torch.get_rng_state(), state)  # the default generator was not touched
    with model_py.thread_generator(torch.Generator().manual_seed(5)):
        assert torch.equal(model_py.dropout(x, 0.5), a)
        assert torch.equal(model_py.sample_tokens(torch.zeros(50, 8)), s)
    assert not torch.equal(model_py.dropout(x, 0.5), a)  # outside: torch's default generator again
    assert 400 < int((a == 0).sum()) < 600


def test_an_error_in_a_thread_is_raised_in_the_caller():
    def step(parts):
        if len(parts[0]["input_ids"]) == 1:
            raise UserError("bad part")
        return torch.zeros(2)

    with pytest.raises(UserError, match="bad part"):
        side_by_side(step, [{"input_ids": torch.zeros(3, 4)}], 2)  # pieces of 2 and 1 rows
    n = torch.get_num_threads()
    side_by_side(lambda ps: torch.zeros(2), [{"input_ids": torch.zeros(4, 4)}] * 2, 2)
    assert torch.get_num_threads() == n  # the caller's thread count is put back


def test_threads_by_default_only_on_a_cpu_in_one_process():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert step_threads(None, CPU, 1) == 2
        assert step_threads(1, CPU, 1) == 1 and step_threads(3, CPU, 1) == 3
        assert step_threads(None, CPU, 2) == 1  # torchrun: the processes share the cores
        assert step_threads(4, torch.device("cuda", 0), 1) == 1
        torch.set_num_threads(1)
        assert step_threads(None, CPU, 1) == 1
    finally:
        torch.set_num_threads(n)


def test_pretraining_with_threads_resumes_exactly(setup, tmp_path, capsys):
    """--step_threads 2, dropout on: SIGTERM at some step, resume, and the weights are an uninterrupted run's
    (which also says two runs draw the same masks whatever the threads' interleaving)."""
    ref, save = tmp_path / "ref.pth", tmp_path / "term.pth"
    pretrain.main(args_for(setup, ref, "--step_threads", "2"))
    assert "2 threads side by side" in capsys.readouterr().out
    p = start("pretrain.py", args_for(setup, save, "--step_threads", "2"))
    wait_for(save, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    assert p.returncode == 128 + signal.SIGTERM, err
    pretrain.main(args_for(setup, save, "--step_threads", "2"))
    assert_same_state(save, ref)


def test_fine_tuning_with_threads_resumes_exactly(setup, tmp_path, capsys):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    ref.mkdir()
    cut.mkdir()
    train.main(finetune_args(setup, ref, "--save_steps", "1", "--step_threads", "2"))
    assert "2 threads side by side" in capsys.readouterr().out
    p = start("train.py", finetune_args(setup, cut, "--save_steps", "1", "--step_threads", "2"), BERT_KILL_IN_SAVE="40")
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    train.main(finetune_args(setup, cut, "--save_steps", "1", "--step_threads", "2"))
    a, b = torch.load(ref / "best.pth", weights_only=True), torch.load(cut / "best.pth", weights_only=True)
    differ = [k for k, v in a["model"].items() if not torch.equal(v, b["model"][k])]
    logs = [(d / "log" / "log.csv").read_text() for d in (ref, cut)]
    # a string, which pytest prints whole: the logs say from which epoch on the runs parted
    assert not differ, f"{len(differ)} tensors differ, {differ[:3]}\nref log:\n{logs[0]}\ncut log:\n{logs[1]}"


def test_bad_step_threads_is_one_line(setup, tmp_path):
    with pytest.raises(UserError, match="--step_threads must be at least 1, got 0"):
        train.main(finetune_args(setup, tmp_path, "--step_threads", "0"))
    with pytest.raises(UserError, match="--step_threads must be at least 1, got -1"):
        pretrain.main(args_for(setup, tmp_path / "x.pth", "--step_threads", "-1"))
