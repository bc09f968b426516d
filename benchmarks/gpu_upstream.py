"""GPU proof for issue 15: today's transformers + kernels 0.19.x, unchanged call sites, JitKernels underneath.

    python benchmarks/gpu_upstream.py --kc /path/to/kernels-community --wheels wheels/gpu-upstream \\
        [--parts kernelize,attention] [--cutlass-archives DIR | --cutlass-dir DIR] [--out benchmarks/results]

1. A venv over this interpreter's site folders (the machine's CUDA torch) gets exactly the wheels of
   ``--wheels`` (kernels 0.19.1, transformers 5.25.0, huggingface_hub 2.4.0 and what they need that the
   machine lacks; ``pip install --no-index``, nothing downloaded). ``--venv`` reuses one.
2. Each part runs in a child of that venv with ``JITKERNELS_AUTOPATCH=1`` (``hooks/sitecustomize.py``
   on the path: ``kernels`` is patched when transformers imports it; the script never calls
   ``patch()``), the kernels-community kernels served from their source trees through
   ``LOCAL_KERNELS`` and a JitKernels cache outside the repository copy (``--cache``, default
   ``$TMPDIR/jitkernels-gpu-upstream``, so a build cut by the run's time limit resumes next run):

   * ``kernelize``: a tiny random Llama in bf16 on the GPU, ``from_pretrained(..., use_kernels=True)``
     (transformers' own CUDA mapping: RMSNorm -> kernels-community/liger-kernels, SiLU ->
     kernels-community/activation, rotary -> kernels-community/rotary) against ``use_kernels=False``;
     then ``kernels.kernelize(model, mode=Mode.INFERENCE, device="cuda")`` on the plain model;
   * ``attention``: ``attn_implementation="kernels-community/flash-attn2"`` (transformers fetches it
     with ``get_kernel``; JitKernels compiles its source, CUTLASS 3.6 from ``--cutlass-*``) against
     ``attn_implementation="sdpa"``. flash-attn2 has 76 units (about 15 min on 16 cores): with
     ``--build-seconds`` the build is stopped after that long and the part says "run again"; the
     next run resumes from the cache.
   * ``suite``: ``jitkernels test flash-attn2 --time-box S`` (its own ``tests/``, the package importable
     as ``flash_attn2``, ``kernels.get_kernel`` patched) in the same venv and cache, so the build above
     is reused; ``--suite-args`` picks the subset (pytest arguments), ``--suite-seconds`` the box, which
     ``--deadline`` (seconds since the script started) shortens so the run ends in time.

   Each part checks that every replaced layer runs code from a module JitKernels built (its file
   lies in the JitKernels cache) and that the logits match within bf16 tolerance.
3. Results: ``<out>/gpu-upstream.json`` (machine, versions, per part: layers replaced, the module
   serving each, max abs diff, tolerance, seconds) and ``<out>/gpu-upstream.md``; exit 0 only if every
   part asked for passed (3: a build was cut by ``--build-seconds``; run again).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

START = time.monotonic()
ROOT = Path(__file__).resolve().parent.parent
REQUIRES = ["kernels==0.19.1", "transformers==5.25.0", "huggingface_hub==2.4.0"]
JITKERNELS_DEPS = ["wrapt", "filelock"]  # jitkernels itself comes from the repository copy (PYTHONPATH)
MAPPED = {  # what transformers 5.25's CUDA mapping asks for on a Llama: served from source trees
    "kernels-community/liger-kernels": "liger-kernels",
    "kernels-community/activation": "activation",
    "kernels-community/rotary": "rotary",
}
ATTN = "kernels-community/flash-attn2"

CHILD_COMMON = r'''
import json, os, sys, tempfile, time
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

CACHE = os.path.realpath(os.environ["JITKERNELS_CACHE"])

def tiny(folder):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)

def logits(model):
    ids = (torch.arange(2 * 64, device="cuda").reshape(2, 64) * 7) % 1024
    with torch.no_grad():
        return model(input_ids=ids).logits.float()

def served(model):
    """layer class -> the module whose code its forward runs, and whether JitKernels built that module."""
    out = {}
    for m in model.modules():
        f = getattr(m, "forward", None)
        name = getattr(getattr(f, "__func__", f), "__module__", None) or ""
        if name.startswith(("transformers.", "torch.")):
            continue
        top = sys.modules.get(name.split(".")[0])
        where = os.path.realpath(getattr(top, "__file__", "") or "")
        out[type(m).__name__] = {"module": name, "jitkernels_built": where.startswith(CACHE)}
    return out

def report(**data):
    import kernels, jitkernels.upstream.patching as p
    data.update(kernels=kernels.__version__, transformers=transformers.__version__, torch=torch.__version__,
                device=torch.cuda.get_device_name(), patched=p.is_patched())
    print("RESULT " + json.dumps(data), flush=True)
'''

CHILD_KERNELIZE = CHILD_COMMON + r'''
folder = tempfile.mkdtemp()
tiny(folder)
plain = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, use_kernels=False, device_map="cuda").eval()
expected = logits(plain)
start = time.monotonic()
model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, use_kernels=True, device_map="cuda").eval()
seconds = time.monotonic() - start
got = logits(model)
from kernels import Mode, kernelize, use_kernel_mapping
from transformers.integrations import hub_kernels
plain2 = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, use_kernels=False, device_map="cuda").eval()
with use_kernel_mapping(hub_kernels.get_kernel_mapping_transformers()):  # transformers' own CUDA mapping
    kernelize(plain2, mode=Mode.INFERENCE, device="cuda")  # upstream's default fallback: a failed load raises
got2 = logits(plain2)
tol = 2e-2 * expected.abs().max().item() + 2e-2
report(part="kernelize", seconds=round(seconds, 2), tolerance=tol,
       use_kernels={"served": served(model), "max_abs_diff": (got - expected).abs().max().item()},
       kernelize={"served": served(plain2), "max_abs_diff": (got2 - expected).abs().max().item()})
'''

CHILD_ATTENTION = CHILD_COMMON + r'''
folder = tempfile.mkdtemp()
tiny(folder)
sdpa = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa",
                                        device_map="cuda").eval()
expected = logits(sdpa)
start = time.monotonic()
model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                         attn_implementation="%(attn)s", device_map="cuda").eval()
seconds = time.monotonic() - start
got = logits(model)
built = sorted(n for n, m in list(sys.modules.items()) if "flash_attn" in n and "." not in n
               and os.path.realpath(getattr(m, "__file__", "") or "").startswith(CACHE))
kernel = sys.modules[built[0]] if built else None
where = os.path.realpath(getattr(kernel, "__file__", "") or "")
tol = 2e-2 * expected.abs().max().item() + 2e-2
report(part="attention", seconds=round(seconds, 2), tolerance=tol, attn_implementation=model.config._attn_implementation,
       kernel_module=getattr(kernel, "__name__", None), jitkernels_built=where.startswith(CACHE),
       max_abs_diff=(got - expected).abs().max().item())
''' % {"attn": ATTN}

CHILD_BUILD = r'''
import jitkernels
jitkernels.load("hf", "%s", backend="cuda")
print("RESULT " + '{"built": true}', flush=True)
''' % ATTN


def run_suite(python: Path, env: dict, seconds: float, pytest_args: list[str], log) -> dict:
    """``jitkernels test flash-attn2`` in the venv: its JSON summary, with the pytest summary line."""
    cmd = [str(python), "-m", "jitkernels", "test", "flash-attn2", "--backend", "cuda", "--time-box",
           f"{seconds:.0f}", "--json", "--", *pytest_args]
    log.write(f"$ {' '.join(cmd)}\n")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    log.write(proc.stderr + proc.stdout)
    sys.stdout.write(proc.stderr[-4000:])
    try:
        summary = json.loads(proc.stdout)
    except ValueError:
        summary = {"stdout": proc.stdout[-2000:]}
    tail = [line.strip("= ") for line in proc.stderr.splitlines()  # "=== 3 passed in 1s ===", or bare under -q
            if re.match(r"^(=+ )?\d+ (passed|failed|errors?|skipped|deselected)\b.* in [\d.]+s( =+)?$", line)]
    return {**summary, "exit_code": proc.returncode, "pytest_summary": tail[-1] if tail else "",
            "command": "jitkernels test flash-attn2 " + " ".join(cmd[cmd.index("--backend"):])}


def make_venv(args) -> Path:
    venv = Path(args.venv) if args.venv else Path(tempfile.gettempdir()) / "jitkernels-gpu-upstream-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        wheels = sorted(Path(args.wheels).glob("*.whl"))
        if not wheels:
            sys.exit(f"no wheels in {args.wheels}: see --help for the list and the pip download command")
        # The machine's torch may itself live in a venv (the GPU machine's python3 is /opt/torch/.venv), which
        # --system-site-packages does not see: a .pth appends this interpreter's site folders after the new
        # venv's own, so its wheels (huggingface_hub 2.4.0 over the machine's 1.x) win and torch is found.
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        import sysconfig

        theirs = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
        import site

        ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                              *site.getsitepackages()])
        Path(theirs, "zz-jitkernels-base.pth").write_text(
            "".join(f"import site; site.addsitedir({folder!r})\n" for folder in ours))
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(args.wheels),
                        *REQUIRES, *JITKERNELS_DEPS], check=True)
    return python


def run_child(python: Path, code: str, env: dict, limit: float | None, log) -> tuple[int, dict | None, bool]:
    """(exit code, the RESULT line's data, cut by the limit)."""
    proc = subprocess.Popen([str(python), "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    result, cut = None, threading.Event()

    def stop() -> None:  # the build's finished units stay in the cache; the next run resumes
        cut.set()
        os.killpg(proc.pid, signal.SIGINT)

    timer = threading.Timer(limit, stop) if limit else None
    if timer:
        timer.start()
    try:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
        code_ = proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        if timer:
            timer.cancel()
    return code_, result, cut.is_set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kc", default=os.environ.get("JITKERNELS_KC"), help="kernels-community checkout")
    parser.add_argument("--wheels", default=str(ROOT / "wheels" / "gpu-upstream"), help="folder of the wheels")
    parser.add_argument("--venv", default=None, help="reuse (or create) this venv")
    parser.add_argument("--parts", default="kernelize,attention", help="comma-separated: kernelize, attention, suite")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "jitkernels-gpu-upstream"),
                        help="JitKernels cache, kept between runs (a cut build resumes)")
    parser.add_argument("--build-seconds", type=float, default=None,
                        help="stop the flash-attn2 build after this long (exit 3: run again to resume)")
    parser.add_argument("--cutlass-archives", default=None,
                        help="folder of cutlass-<version>.tar.gz (git archive --prefix=cutlass-<version>/ ...), unpacked "
                             "into a temporary JITKERNELS_CUTLASS_DIR")
    parser.add_argument("--cutlass-dir", default=None, help="JITKERNELS_CUTLASS_DIR (cutlass-<version>/include)")
    parser.add_argument("--suite-seconds", type=float, default=300, help="time box of the suite part")
    parser.add_argument("--suite-args", default="tests/test_flash_attn.py -k 128 -q",
                        help="pytest arguments of the suite part (default: the head-dim/seqlen-128 cases)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds since start by which the suite part must end (shortens its box)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the results go")
    args = parser.parse_args()
    if not args.kc or not Path(args.kc, "activation").is_dir():
        parser.error("--kc (or JITKERNELS_KC): a kernels-community checkout")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    python = make_venv(args)
    kc = Path(args.kc).resolve()
    env = dict(os.environ, JITKERNELS_AUTOPATCH="1", JITKERNELS_CACHE=args.cache, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "hooks")]),
               LOCAL_KERNELS=":".join(f"{r}={kc / d}" for r, d in {**MAPPED, ATTN: "flash-attn2"}.items()))
    if args.cutlass_dir:
        env["JITKERNELS_CUTLASS_DIR"] = args.cutlass_dir
    if args.cutlass_archives:  # unpacked here: the children run with HF_HUB_OFFLINE=1, which forbids downloads
        import tarfile

        unpacked = Path(tempfile.mkdtemp(prefix="jitkernels-cutlass-"))
        for archive in sorted(Path(args.cutlass_archives).glob("cutlass-*.tar.gz")):
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")
        env["JITKERNELS_CUTLASS_DIR"] = str(unpacked)
    results, ok, cut_any = {"parts": {}}, True, False
    with open(out / "gpu-upstream.log", "a") as log:
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
        for part in parts:
            start = time.monotonic()
            if part == "attention" and args.build_seconds:
                code, _, cut = run_child(python, CHILD_BUILD, env, args.build_seconds, log)
                if cut or code != 0:
                    results["parts"][part] = {"ok": False, "cut": cut, "exit_code": code,
                                              "note": "flash-attn2 build stopped: run again to resume" if cut
                                              else "flash-attn2 build failed (see gpu-upstream.log)"}
                    ok, cut_any = False, cut_any or cut
                    continue
            if part == "suite":
                box = args.suite_seconds
                if args.deadline:
                    box = min(box, args.deadline - (time.monotonic() - START) - 30)
                if box < 20:
                    results["parts"][part] = {"ok": False, "note": f"no time left for the suite ({box:.0f} s)"}
                    ok = False
                    continue
                data = run_suite(python, env, box, args.suite_args.split(), log)
                outcomes = data.get("outcomes", {})
                passed = data["exit_code"] == 0 and outcomes.get("passed", 0) > 0
                results["parts"][part] = {**data, "ok": passed, "wall_s": round(time.monotonic() - start, 1)}
                ok = ok and passed
                continue
            child = {"kernelize": CHILD_KERNELIZE, "attention": CHILD_ATTENTION}[part]
            code, data, _ = run_child(python, child, env, None, log)
            data = data or {}
            if part == "kernelize":
                passed = code == 0 and all(
                    data[k]["max_abs_diff"] <= data["tolerance"] and data[k]["served"]
                    and all(s["jitkernels_built"] for s in data[k]["served"].values())
                    for k in ("use_kernels", "kernelize")) if data else False
            else:
                passed = bool(data) and code == 0 and data["jitkernels_built"] and \
                    data["max_abs_diff"] <= data["tolerance"] and data["attn_implementation"] == ATTN
            results["parts"][part] = {**data, "ok": passed, "exit_code": code,
                                      "wall_s": round(time.monotonic() - start, 1)}
            ok = ok and passed
    results["command"] = " ".join(sys.argv)
    (out / "gpu-upstream.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| part | ok | replaced layers / kernel | max abs diff | tolerance | wall s |", "|---|---|---|---|---|---|"]
    for part, r in results["parts"].items():
        what = r.get("note") or json.dumps({k: r[k]["served"] for k in ("use_kernels", "kernelize") if k in r}) \
            if part == "kernelize" else r.get("note") or (
                f"{r.get('pytest_summary')}; outcomes {r.get('outcomes')}; cut after {r.get('cut_after')} tests "
                f"by the {r.get('time_box')} s box" if part == "suite" else r.get("kernel_module"))
        diff = r.get("max_abs_diff", {k: r[k]["max_abs_diff"] for k in ("use_kernels", "kernelize") if k in r})
        lines.append(f"| {part} | {r['ok']} | {what} | {diff} | {r.get('tolerance', '-')} | {r.get('wall_s', '-')} |")
    (out / "gpu-upstream.md").write_text(f"`{results['command']}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else (3 if cut_any else 1)


if __name__ == "__main__":
    sys.exit(main())
