"""The vLLM engine both tier probes build (imported by ``vllm_cpu_probe.py`` / ``vllm_multiturn_probe.py``, which
run as scripts inside ``.venv-vllm`` with this folder on ``sys.path``)."""


def build_llm(model_dir: str, *, dtype: str, max_num_seqs: int, **extra):
    """vLLM 0.24 on CPU with route return and prefix caching on (vLLM's and verl's default, said explicitly)."""
    from vllm import LLM

    return LLM(
        model=model_dir,
        dtype=dtype,
        enable_return_routed_experts=True,
        enable_prefix_caching=True,
        max_model_len=128,
        max_num_seqs=max_num_seqs,
        enforce_eager=True,
        gpu_memory_utilization=0.2,  # on CPU: the share of host memory vLLM reserves
        skip_tokenizer_init=True,
        seed=0,
        **extra,
    )
