"""GPU proof of the background cold start (issue 18): a tiny random transformers model on a cold cache.

A tiny random ``LlamaForCausalLM`` (transformers' ``SiLUActivation`` is decorated
``@use_kernel_forward_from_hub("SiLU")``) is kernelized under ``jitkernels.patch`` with
``SiLU`` mapped to kernels-community ``activation``'s ``Silu`` layer (a native CUDA kernel,
served from its source tree through ``LOCAL_KERNELS``, built for the local arch), in a fresh
cache, then generates tokens greedily, one forward per token. Each mode runs in its own new
process and its own empty cache:

* ``block``: kernelize waits for the build (today's behaviour);
* ``background``: kernelize returns at once, tokens are served by torch's SiLU while the
  kernel builds in another process, then by the kernel.

Measured per mode: seconds from the start of kernelize to the first token, tokens served
before the switch, when the switch happened, and agreement: the logits of every step must
match those of the model without kernels within bf16 tolerance (``--atol``), before and
after the switch; how many whole requests gave exactly the reference's greedy tokens is
reported too. Tokens are served as requests of ``--tokens`` greedy tokens from one prompt.

    python benchmarks/bench_cold_start_gpu.py --kc /path/to/kernels-community \\
        --out benchmarks/results/gpu-h100-cold-start.md

Needs a CUDA GPU, nvcc, a CUDA build of torch, and ``kernels`` and ``transformers`` installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYER_REPO = "kernels-community/activation"


def _model(seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         hidden_act="silu")
    return LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()


def _act_fns(model):
    return [layer.mlp.act_fn for layer in model.model.layers]


def child(mode: str, tokens: int, after: int, seed: int, max_seconds: float) -> dict:
    """One mode, in this (new) process: kernelize, then generate; returns the measurements."""
    import torch

    import jitkernels
    from jitkernels import coldstart
    from kernels import LayerRepository, Mode, kernelize, use_kernel_mapping

    model = _model(seed)
    acts = _act_fns(model)
    original = type(acts[0]).forward
    assert getattr(type(acts[0]), "kernel_layer_name", None) == "SiLU", "this transformers has no SiLU hub layer"
    prompt = torch.randint(0, 512, (1, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))

    # The reference: the same model without kernels (torch's SiLU), greedy.
    with torch.no_grad():
        ids, ref_logits = prompt, []
        for _ in range(tokens):
            logits = model(ids).logits[:, -1].float()
            ref_logits.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    ref_ids = ids[0, prompt.shape[1]:].tolist()
    torch.cuda.synchronize()

    jitkernels.patch(cold_start=mode)
    t0 = time.perf_counter()
    with use_kernel_mapping({"SiLU": {"cuda": LayerRepository(LAYER_REPO, layer_name="Silu", version=1)}}, inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device="cuda")
    kernelize_s = time.perf_counter() - t0

    # Serve requests of ``tokens`` greedy tokens each, from the prompt, one forward per token; block:
    # one request; background: until ``after`` tokens after the switch (or ``max_seconds``).
    steps, got_ids, switched_at, after_switch = [], [], None, 0
    with torch.no_grad():
        while True:
            ids = prompt
            for position in range(tokens):
                on_kernel = [a.forward.__func__ is not original for a in acts]
                logits = model(ids).logits[:, -1].float()
                torch.cuda.synchronize()
                steps.append({"t": time.perf_counter() - t0, "kernel_layers": sum(on_kernel),
                              "max_err": (logits - ref_logits[position]).abs().max().item()})
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
                if all(on_kernel):
                    switched_at = len(steps) - 1 if switched_at is None else switched_at
                    after_switch += 1
            got_ids.append(ids[0, prompt.shape[1]:].tolist())
            if mode == "block" or after_switch >= after or steps[-1]["t"] > max_seconds:
                break
    requests_equal = sum(g == ref_ids for g in got_ids)
    builds = coldstart.builds()
    return {
        "mode": mode,
        "kernelize_s": round(kernelize_s, 3),
        "ttft_s": round(steps[0]["t"], 3),
        "tokens": len(steps),
        "tokens_before_switch": switched_at if switched_at is not None else len(steps),
        "switch_seen_at_s": round(steps[switched_at]["t"], 3) if switched_at is not None else None,
        "background_build_s": round(builds[0].seconds, 1) if builds and builds[0].seconds else None,
        "partial_steps": sum(0 < s["kernel_layers"] < len(acts) for s in steps),
        "requests": len(got_ids),
        "requests_equal_reference": requests_equal,
        "max_logit_err_before": max([s["max_err"] for s in (steps if switched_at is None else steps[:switched_at])],
                                    default=None),
        "max_logit_err_after": max([s["max_err"] for s in steps[switched_at:]], default=None)
        if switched_at is not None else None,
        "layers_on_kernel_at_end": steps[-1]["kernel_layers"] if steps else 0,
        "layers": len(acts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kc", required=False, help="kernels-community checkout (its activation/ source tree)")
    parser.add_argument("--modes", default="block,background", help="comma-separated: block, background")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens per request")
    parser.add_argument("--after", type=int, default=64, help="background: tokens to serve after the switch")
    parser.add_argument("--max-seconds", type=float, default=150, help="background: stop serving after this")
    parser.add_argument("--atol", type=float, default=0.05, help="largest logit difference vs no kernels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results file (markdown, with the JSON rows)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.tokens, args.after, args.seed, args.max_seconds)), flush=True)
        return 0
    if not args.kc:
        parser.error("--kc is required")

    import torch

    rows, lines = [], []
    device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    lines.append(f"device: {device}")
    for mode in args.modes.split(","):
        cache = tempfile.mkdtemp(prefix=f"jk-coldstart-{mode}-")
        env = dict(os.environ, JITKERNELS_CACHE=cache, LOCAL_KERNELS=f"{LAYER_REPO}={Path(args.kc) / 'activation'}",
                   JITKERNELS_COLD_START="block")
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens),
                              "--after", str(args.after), "--seed", str(args.seed),
                              "--max-seconds", str(args.max_seconds)],
                             capture_output=True, text=True, env=env)
        print(out.stderr[-4000:], file=sys.stderr)
        found = [line[len("RESULT "):] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not found:
            print(out.stdout[-2000:])
            lines.append(f"{mode}: FAILED (exit {out.returncode})")
            continue
        row = json.loads(found[0])
        row["process_s"] = round(time.perf_counter() - started, 1)
        row["agree"] = all(
            e is None or e <= args.atol for e in (row["max_logit_err_before"], row["max_logit_err_after"]))
        rows.append(row)
        print(json.dumps(row))
    lines += ["", "| mode | kernelize (s) | first token (s) | tokens before switch | switch seen at (s) | "
                  "background build (s) | layers on kernel at end | requests = reference | max logit err before/after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['kernelize_s']} | {r['ttft_s']} | {r['tokens_before_switch']} | "
                     f"{r['switch_seen_at_s']} | {r['background_build_s']} | {r['layers_on_kernel_at_end']}/{r['layers']} | "
                     f"{r['requests_equal_reference']}/{r['requests']} | {r['max_logit_err_before']} / {r['max_logit_err_after']} |")
    lines += ["", "```json", json.dumps(rows, indent=1), "```"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if rows and all(r["agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
