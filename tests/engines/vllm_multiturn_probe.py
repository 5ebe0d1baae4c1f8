"""Run inside the optional ``.venv-vllm``: a real vLLM 0.24.0 engine on CPU runs two turns of a multi-turn
trajectory the way verl's tool agent loop sends them (turn 2's prompt = turn 1's prompt + its sampled tokens + a
tool response), route return on, prefix caching on. Prints one JSON object per trajectory and turn. Usage:
python vllm_multiturn_probe.py MODEL_DIR DTYPE PROMPTS_JSON TOOL_IDS_JSON"""

import json
import sys


def main() -> None:
    import numpy as np
    from vllm import SamplingParams
    from vllm_probe_engine import build_llm

    model_dir, dtype, prompts, tool_ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    # small blocks: turn 2 hits the prefix cache turn 1 left
    llm = build_llm(model_dir, dtype=dtype, max_num_seqs=len(prompts), block_size=16)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=0, detokenize=False, ignore_eos=True)
    sent = [list(p) for p in prompts]
    for turn in range(2):
        outs = llm.generate([{"prompt_token_ids": p} for p in sent], params)
        for i, out in enumerate(outs):
            completion = out.outputs[0]
            routes = np.asarray(completion.routed_experts)
            record = {
                "trajectory": i,
                "turn": turn,
                "prompt_ids": sent[i],
                "token_ids": list(completion.token_ids),
                "num_cached_tokens": out.num_cached_tokens,
                "routes_dtype": str(routes.dtype),
                "routes": routes.tolist(),
            }
            print("PROBE " + json.dumps(record), flush=True)
            sent[i] = sent[i] + list(completion.token_ids) + tool_ids


if __name__ == "__main__":
    main()
