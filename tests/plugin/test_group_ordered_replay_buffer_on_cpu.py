"""The replay buffer that lays verl's synchronous batches out by content (``GroupOrderedReplayBuffer``): whole
prompt groups in submission order, each group's responses by their tokens -- not the order the rollouts finished.
Through verl's trainer the lab's end-to-end test reruns a run and gets every metric back bit for bit
(tests/lab/test_lab_e2e_on_cpu.py)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from verl_stable.integration import replay_buffer as rb
from verl_stable.lab import sampler


def test_a_batch_is_laid_out_by_submission_and_response_not_by_completion():
    prompts = ["b7e1", "0a3c", "f9d2"]  # uuid4 prefixes: their sorted order is not the submission order
    wanted = [f"{uid}_{session}_0" for uid in prompts for session in range(3)]
    finished = list(reversed(wanted))
    finished[2], finished[5] = finished[5], finished[2]  # any completion order
    assert rb.submission_order(finished, prompts) == wanted
    assert rb.submission_order(["a_10_0", "a_2_0", "a_2_1"], ["a"]) == ["a_2_0", "a_2_1", "a_10_0"]  # numbers
    # which session drew which response is arrival order too: a prompt's responses go by their tokens
    drawn = {"a_0_0": [5, 2], "a_1_0": [3, 9, 1], "a_2_0": [5, 2], "b_0_0": [1]}
    assert rb.submission_order(drawn, ["b", "a"], drawn) == ["b_0_0", "a_1_0", "a_0_0", "a_2_0"]
    # whole groups: a mini-batch of k prompts' worth of rows is k whole groups
    order = rb.submission_order(finished, prompts)
    assert [k.split("_")[0] for k in order[:3]] == ["b7e1"] * 3


def test_bad_keys_are_refused_naming_the_format():
    with pytest.raises(ValueError, match="not among the batch's prompts"):
        rb.submission_order(["zz_0_0"], ["a"])
    with pytest.raises(ValueError, match="session_id"):
        rb.submission_order(["b7e1-0"], ["b7e1"])
    with pytest.raises(ValueError, match="no response"):
        rb.submission_order(["a_0_0", "a_3_0"], ["a"], {"a_0_0": [1]})


def _buffer(cls, mode: str, **kwargs):
    return cls(mode, OmegaConf.create({}), None, "drop", OmegaConf.create(kwargs))


def test_it_is_verls_sync_sampler_and_refuses_the_async_modes():
    buffer = _buffer(rb.GroupOrderedReplayBuffer, "sync")
    assert buffer.trainer_mode == "sync" and buffer.poll_interval == 2.0  # verl's own defaults otherwise
    assert buffer.order_within_group == "session"  # keys only: nothing read per step on a 30k-token recipe
    assert _buffer(rb.GroupOrderedReplayBuffer, "sync", order_within_group="response").order_within_group == "response"
    # the lab's: the poll interval, and each group by its responses (bit-for-bit reruns)
    lab = sampler.PollingReplayBuffer("sync", OmegaConf.create({}), None, "drop", sampler_kwargs={"poll_interval": 0.05})
    assert isinstance(lab, rb.GroupOrderedReplayBuffer) and lab.poll_interval == 0.05
    assert lab.order_within_group == "response"
    with pytest.raises(ValueError, match=r"trainer.v1.trainer_mode='separate_async'.*unset trainer.v1.sampler"):
        _buffer(rb.GroupOrderedReplayBuffer, "separate_async")
    with pytest.raises(ValueError, match=r"order_within_group='tokens': expected one of session, response"):
        _buffer(rb.GroupOrderedReplayBuffer, "sync", order_within_group="tokens")


def test_the_overrides_name_verls_extension_point():
    assert rb.overrides() == [
        "trainer.v1.sampler.custom_sampler.path=pkg://verl_stable.integration.replay_buffer",
        "trainer.v1.sampler.custom_sampler.name=GroupOrderedReplayBuffer",
    ]
    assert rb.overrides("response")[-1] == "+trainer.v1.sampler.sampler_kwargs.order_within_group=response"
    assert "+trainer.v1.sampler.sampler_kwargs.order_within_group=response" in sampler.overrides()
