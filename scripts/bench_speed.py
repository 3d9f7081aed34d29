"""Training and evaluation speed of memlm's heads, against the machine's own matmul.

    python scripts/bench_speed.py [--size default|d512|gpt2-small] [--heads rmt armt lm2 baseline] [--segments 8]
                                  [--data memorize|pg19] [--batch-size 8] [--steps 5] [--precision bf16-mixed|32-true]
                                  [--memory-segments 4 16 64] [--bptt-depth 2] [--device cuda|cpu] [--out DIR]
                                  [--versus-lucidrains] [--evaluation] [--eval-segments 64] [--profile]
                                  [--generation] [--generation-segments 32 1024] [--prompt-tokens 512]
                                  [--new-tokens 64] [--compile]

For each head, the median seconds of a training step (forward, chunked backward, AdamW) over --steps timed steps
after two warm-up steps, on one fixed batch of --data (memorize by default; pg19 gives a language-model batch with a
loss on every token) of --batch-size samples of --segments segments; from it tokens/s and FLOP/s. FLOPs are those
torch's FLOP counter sees in one step: the matmuls and attention that actually run, forward and backward, the heads'
own included. So on memorize, where only the answer's segment carries a loss, the baseline back-propagates that one
segment while a memory head back-propagates through every segment its state reaches (all of them at the default
BPTT depth), and `x base FLOPs` says how much more work a head does; `time/FLOP` is its step time over the
baseline's divided by that: above 1, the head's work runs slower per FLOP than the backbone's own. MFU is FLOP/s
over the FLOP/s of one large matmul measured in the same run (the machine's reachable peak), and, on a GPU whose
nominal dense bf16 peak is known, over that too. Then the peak memory of a training step at --memory-segments with
`recurrence.bptt_depth=--bptt-depth` (GPU only: torch's allocator peak), which truncated BPTT keeps flat in the
segment count. Steps of the heads run interleaved (round-robin), so a change in the machine's load hits all alike.

--versus-lucidrains: memlm's RMT (the default model and language-model data: the embedded PG-19 layout) against
lucidrains' recurrent-memory-transformer (`pip install -e '.[bench]'`) of the same width, depth, heads, memory
tokens and segment length, on the same token batch, each step a full backward over all segments (theirs without
XL memories and with one residual stream, so both do the same matmuls), interleaved. --evaluation: no-grad
evaluation of each head per segment against the bare backbone's forward over the same segments (--eval-segments of
them, 64 by default, so the answer's scoring, once per sample, weighs on a segment as little as in a long evaluation),
also divided by the head's extra positions per segment. --generation: greedy generation at batch 1 on SmolLM2-135M
(`backbone=smollm2`, offline from `python -m memlm.assets smollm2-135m`), a --prompt-tokens prompt and
--new-tokens new tokens, end to end, memlm's `generate` with the baseline and RMT (untrained memory: speed only) at
each of --generation-segments tokens per segment against Hugging Face's `generate` with its key/value cache over
the whole prompt, interleaved. --profile: one
more training step of each head under torch's profiler; prints its operators with the most self time on the device
(the CPU's when there is no GPU) and writes profile_<head>.txt, so a head's overhead over the baseline is found by
operator, not guessed. --compile: each head also with `backbone.compile=true` (every block's forward through
torch.compile), named `<head>+compile`, after two untimed steps that compile it, interleaved with the eager ones.

--size gpt2-small: a random-init GPT-2-small-sized backbone (12 layers, d=768, 12 heads, 1,024 positions) with
512-token segments, the size of the RMT paper's GPT-2 runs; d512: 4 layers, d=512, 8 heads, the default's 32-token
segments (issue 14's FLOP/s yardstick); default: the embedded default config. Prints a table,
writes bench_speed.json under --out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from benchmarking import composed, machine, watched  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from memlm.module import FUSED_ADAMW_DEVICES  # noqa: E402
from memlm.runs import keep_freed_memory, write_json  # noqa: E402
from memlm.training import build  # noqa: E402

SIZES = {
    "default": [],
    "d512": ["backbone.tiny.n_layer=4", "backbone.tiny.n_embd=512", "backbone.tiny.n_head=8"],
    "gpt2-small": ["backbone.tiny.n_layer=12", "backbone.tiny.n_embd=768", "backbone.tiny.n_head=12",
                   "backbone.tiny.n_positions=1024", "data.segment_length=512"],
}
HEAD_OVERRIDES = {"rmt": ["model=rmt"], "armt": ["model=armt"], "lm2": ["model=lm2"], "hmt": ["model=hmt"],
                  "lrmt": ["model=lrmt"], "extended_mind": ["model=extended_mind"], "baseline": ["model=baseline"]}
NOMINAL_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks from NVIDIA's data sheets (SXM parts), by a name the device reports."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run):
    """The seconds `run()` takes, the device's queued work included, and what it returns."""
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """The median TFLOP/s of a size x size x size matmul: the peak this machine reaches in practice."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    times = [timed(device, lambda: a @ b)[0] for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times) / 1e12


def adamw(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as training builds it (`MemoryLM.configure_optimizers`: the fused kernel where there is one)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in FUSED_ADAMW_DEVICES)


class Contestant:
    """One head's model, optimiser and fixed batch, stepped on demand."""

    def __init__(self, name: str, overrides: list[str], batch_size: int, segments: int, device: torch.device,
                 precision: str):
        cfg = composed("train", [*overrides, f"data.batch_size={batch_size}", f"curriculum.segments=[{segments}]",
                                  "run_dir=unused"])
        datamodule, model = build(cfg)
        self.name, self.device, self.segments = name, device, segments
        self.model = model.to(device).train()
        self.optimizer = adamw(self.model, device)
        samples = datamodule.samples("validation", segments, batch_size)
        batch = next(iter(datamodule.loader(samples)))
        self.batch = {key: value.to(device) for key, value in batch.items()}
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
        self.tokens = batch_size * segments * datamodule.segment_length
        self.flops = 0
        self.times: list[float] = []

    def step(self) -> float:
        """One timed training step: its seconds."""
        self.optimizer.zero_grad(set_to_none=True)
        seconds, loss = timed(self.device, self.train_step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: the training loss is {loss.item()}")
        return seconds

    def count_flops(self) -> None:
        """One untimed step under torch's FLOP counter: the FLOPs a step runs."""
        with FlopCounterMode(display=False) as counter:
            self.step()
        self.flops = counter.get_total_flops()

    def train_step(self) -> torch.Tensor:
        with self.autocast:
            loss, _ = self.model.unroll(self.batch, backward=torch.Tensor.backward)
        self.optimizer.step()
        return loss


def lucidrains_shape(memlm: Contestant) -> dict:
    """The keywords of lucidrains' RecurrentMemoryTransformer that match memlm's backbone and RMT."""
    config, head = memlm.model.head.backbone.model.config, memlm.model.head
    return {"dim": config.hidden_size, "num_tokens": config.vocab_size, "depth": config.num_hidden_layers,
            "heads": config.num_attention_heads, "dim_head": config.hidden_size // config.num_attention_heads,
            "num_memory_tokens": head.num_mem_tokens, "seq_len": memlm.batch["input_ids"].shape[-1]}


class Lucidrains(Contestant):
    """lucidrains' RecurrentMemoryTransformer on memlm's token batch, shaped like memlm's backbone and RMT; timed by
    Contestant.step, built from `lucidrains_shape` instead of a memlm config."""

    def __init__(self, name: str, shape: dict, ids: torch.Tensor, device: torch.device, precision: str):
        from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformer, RecurrentMemoryTransformerWrapper

        model = RecurrentMemoryTransformer(**shape, use_xl_memories=False, num_residual_streams=1)
        self.name, self.device, self.tokens, self.times = name, device, ids.numel(), []
        self.model = RecurrentMemoryTransformerWrapper(model).to(device).train()
        self.optimizer = adamw(self.model, device)
        self.ids = torch.cat([ids, ids[:, -1:]], dim=1).to(device)  # it predicts x[1:] from x[:-1]
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def train_step(self) -> torch.Tensor:
        with self.autocast:
            loss, _ = self.model(self.ids, return_loss=True)
        loss.backward()
        self.optimizer.step()
        return loss


def lucidrains_worker(connection, threads: int, *arguments) -> None:
    """A process of its own for `Lucidrains(*arguments)`: one step, its seconds sent back, per request."""
    torch.set_num_threads(threads)
    contestant = Lucidrains(*arguments)
    while connection.recv():
        connection.send(contestant.step())


class LucidrainsProcess:
    """`Lucidrains` stepped in a spawned process, so that it runs with the C library's allocator as its users run
    it, not with this process's `keep_freed_memory`; its steps still alternate with the others'."""

    def __init__(self, name: str, shape: dict, ids: torch.Tensor, device: torch.device, precision: str):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=lucidrains_worker, args=(child, torch.get_num_threads(), name, shape,
                                                                       ids, device, precision), daemon=True)
        self.process.start()
        self.name, self.tokens, self.times = name, ids.numel(), []

    def step(self) -> float:
        self.connection.send(True)
        return self.connection.recv()

    def __enter__(self) -> LucidrainsProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.connection.send(False)
        self.process.join()


def interleaved(contestants: list, steps: int) -> None:
    """Two warm-up steps each, then `steps` timed steps each, round-robin."""
    for _ in range(2):
        for contestant in contestants:
            contestant.step()
    for _ in range(steps):
        for contestant in contestants:
            contestant.times.append(contestant.step())


def generation_rows(args, device: torch.device) -> list[dict]:
    """Seconds of one greedy generation per contender, interleaved, and each over Hugging Face's."""
    from memlm.generation import Sampling, generate

    contenders = {}
    for name in ("baseline", "rmt"):
        _, model = build(composed("train", ["backbone=smollm2", f"model={name}", "run_dir=unused"]))
        head = model.head.to(device).eval()
        for segment_length in args.generation_segments:
            contenders[f"memlm {name}, {segment_length}-token segments"] = partial(
                generate, head, segment_length=segment_length,
                sampling=Sampling(max_new_tokens=args.new_tokens, stop_at_eos=False))
    hf, tokenizer = head.backbone.model, head.backbone.tokenizer
    text = " ".join(["The morning was cold and the road to the village was long."] * args.prompt_tokens)
    prompt = tokenizer(text, return_tensors="pt")["input_ids"][:, : args.prompt_tokens].to(device)
    contenders["Hugging Face generate (cache)"] = lambda ids: hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
        do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id)
    times = {name: [] for name in contenders}
    with torch.no_grad():
        for run in contenders.values():
            run(prompt)
        for _ in range(args.steps):
            for name, run in contenders.items():
                times[name].append(timed(device, partial(run, prompt))[0])
    reference = statistics.median(times["Hugging Face generate (cache)"])
    return [{"generator": name, "seconds": statistics.median(values), "spread": max(values) / min(values),
             "vs_hf_generate": statistics.median(values) / reference} for name, values in times.items()]


def lucidrains_rows(args, device: torch.device) -> list[dict]:
    try:
        import recurrent_memory_transformer_pytorch  # noqa: F401
    except ImportError:
        print("--versus-lucidrains: skipped, recurrent-memory-transformer-pytorch is not installed "
              "(pip install -e '.[bench]')")
        return []
    memlm = Contestant("memlm rmt", ["data=pg19"], args.batch_size, args.segments, device, args.precision)
    arguments = (lucidrains_shape(memlm), memlm.batch["input_ids"].flatten(1).cpu(), device, args.precision)
    contestants = [memlm, Lucidrains("lucidrains, this process", *arguments)]
    with ExitStack() as processes:
        if args.keep_freed_memory:
            contestants.append(processes.enter_context(LucidrainsProcess("lucidrains, own process", *arguments)))
        interleaved(contestants, args.steps)
    ours = statistics.median(memlm.times)
    return [{"model": c.name, "step_s": statistics.median(c.times), "spread": max(c.times) / min(c.times),
             "tokens_per_s": c.tokens / statistics.median(c.times),
             "memlm_speedup": statistics.median(c.times) / ours} for c in contestants]


def bare_forward(backbone, batch: dict) -> None:
    """The backbone alone over each segment's tokens: no memory, no loss."""
    for k in range(batch["input_ids"].shape[1]):
        backbone(backbone.embed(batch["input_ids"][:, k]), batch["attention_mask"][:, k])


def evaluation_rows(args, device: torch.device) -> list[dict]:
    """Per head: seconds per segment of a no-grad evaluation (`MemoryLM.unroll`) and of the bare backbone's
    forward over the same segments, timed alternately."""
    rows = []
    for name in args.heads:
        contestant = Contestant(name, [*SIZES[args.size], *HEAD_OVERRIDES[name]], args.batch_size,
                                args.eval_segments, device, args.precision)
        model, batch = contestant.model.eval(), contestant.batch
        runs = {"eval": partial(model.unroll, batch), "bare": partial(bare_forward, model.head.backbone, batch)}
        times = {"eval": [], "bare": []}
        with torch.no_grad(), contestant.autocast:
            for run in runs.values():
                run()
            for _ in range(args.steps):
                for key, run in runs.items():
                    times[key].append(timed(device, run)[0])
        evaluation, plain = statistics.median(times["eval"]), statistics.median(times["bare"])
        positions = batch["input_ids"].shape[-1]
        extra = model.head.extra_positions()
        rows.append({"head": name, "eval_s_per_segment": evaluation / args.eval_segments,
                     "bare_s_per_segment": plain / args.eval_segments, "ratio": evaluation / plain,
                     "extra_positions": extra, "ratio_per_position": evaluation / plain / (1 + extra / positions)})
    return rows


def training_rows(args, device: torch.device, peak: float, nominal: float | None) -> list[dict]:
    def contestant(name: str, *overrides: str, label: str | None = None) -> Contestant:
        return Contestant(label or name, [*SIZES[args.size], *HEAD_OVERRIDES[name], f"data={args.data}", *overrides],
                          args.batch_size, args.segments, device, args.precision)

    contestants = [contestant(name) for name in args.heads]
    for eager in contestants:
        eager.count_flops()
    if args.compile:
        for eager in list(contestants):
            compiled = contestant(eager.name, "backbone.compile=true", label=f"{eager.name}+compile")
            # The first steps compile (forward, then backward); the compiled model runs the eager one's FLOPs.
            compiled.step()
            compiled.step()
            compiled.flops = eager.flops
            contestants.append(compiled)
    interleaved(contestants, args.steps)
    baseline = next((c for c in contestants if c.name == "baseline"), None)
    rows = []
    for contestant in contestants:
        seconds = statistics.median(contestant.times)
        tflops = contestant.flops / seconds / 1e12
        row = {"head": contestant.name, "step_s": seconds, "spread": max(contestant.times) / min(contestant.times),
               "tokens_per_s": contestant.tokens / seconds, "gflop": contestant.flops / 1e9, "tflops": tflops,
               "mfu_vs_matmul": tflops / peak, "mfu_vs_nominal": tflops / nominal if nominal else None,
               "vs_baseline": None, "flops_vs_baseline": None, "time_per_flop_vs_baseline": None}
        if baseline:
            row["vs_baseline"] = seconds / statistics.median(baseline.times)
            row["flops_vs_baseline"] = contestant.flops / baseline.flops
            row["time_per_flop_vs_baseline"] = row["vs_baseline"] / row["flops_vs_baseline"]
        rows.append(row)
    return rows


def profile_tables(args, device: torch.device, rows: int = 25) -> dict[str, str]:
    """Per head, the profiler's table of one training step (after two warm-up steps), by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = {}
    for name in args.heads:
        contestant = Contestant(name, [*SIZES[args.size], *HEAD_OVERRIDES[name], f"data={args.data}"],
                                args.batch_size, args.segments, device, args.precision)
        contestant.step()
        contestant.step()
        with profile(activities=activities) as profiler:
            contestant.step()
        tables[name] = profiler.key_averages().table(sort_by=sort_by, row_limit=rows)
        del contestant
    return tables


def memory_rows(args, device: torch.device) -> list[dict]:
    rows = []
    for segments in args.memory_segments:
        contestant = Contestant("rmt", [*SIZES[args.size], "model=rmt", f"recurrence.bptt_depth={args.bptt_depth}"],
                                args.batch_size, segments, device, args.precision)
        contestant.step()
        torch.cuda.reset_peak_memory_stats(device)
        seconds = contestant.step()
        rows.append({"segments": segments, "bptt_depth": args.bptt_depth, "step_s": seconds,
                     "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30})
        del contestant
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--heads", nargs="+", choices=sorted(HEAD_OVERRIDES), default=["rmt", "baseline"])
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--data", choices=["memorize", "pg19"], default="memorize")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=["bf16-mixed", "32-true"], default="32-true")
    parser.add_argument("--memory-segments", type=int, nargs="*", default=[4, 16, 64])
    parser.add_argument("--bptt-depth", type=int, default=2)
    parser.add_argument("--versus-lucidrains", action="store_true")
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="as train.py and eval.py do by default (keep_freed_memory=true, memlm/runs.py)")
    parser.add_argument("--evaluation", action="store_true")
    parser.add_argument("--eval-segments", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time each head with backbone.compile=true (torch.compile of every block)")
    parser.add_argument("--generation", action="store_true")
    parser.add_argument("--generation-segments", type=int, nargs="+", default=[32, 1024])
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_speed"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    bf16 = args.precision == "bf16-mixed"
    on_gpu = device.type == "cuda"
    peak = matmul_tflops(device, torch.bfloat16 if bf16 else torch.float32, 8192 if on_gpu else 2048)
    name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    nominal = next((value for key, value in NOMINAL_BF16_TFLOPS.items() if key in name), None) if bf16 else None
    print(f"{name}: {args.precision} matmul {peak:.1f} TFLOP/s" + (f" (nominal {nominal:.0f})" if nominal else ""))

    loads = {}
    with watched("the training steps", loads):
        training = training_rows(args, device, peak, nominal)

    def measured(what: str, wanted: bool, rows) -> list[dict]:
        if not wanted:
            return []
        with watched(what, loads):
            return rows(args, device)
    print(f"\ntraining step, {args.size}, {args.data}, {args.batch_size} x {args.segments} segments, "
          f"median of {args.steps}")
    print(f"{'head':<17} {'step s':>7} {'spread':>6} {'tokens/s':>9} {'GFLOP':>8} {'TFLOP/s':>8} {'MFU mm':>7} "
          f"{'MFU nom':>7} {'x base':>6} {'x base FLOPs':>12} {'time/FLOP':>9}")
    for row in training:
        optional = [(row["mfu_vs_nominal"], 7, 3), (row["vs_baseline"], 6, 2), (row["flops_vs_baseline"], 12, 2),
                    (row["time_per_flop_vs_baseline"], 9, 2)]
        print(f"{row['head']:<17} {row['step_s']:>7.3f} {row['spread']:>6.2f} {row['tokens_per_s']:>9.0f} "
              f"{row['gflop']:>8.1f} {row['tflops']:>8.3f} {row['mfu_vs_matmul']:>7.3f} "
              + " ".join(f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"
                         for value, width, digits in optional))

    memory = measured("the memory steps", on_gpu and bool(args.memory_segments), memory_rows)
    if memory:
        print(f"\npeak memory of a training step, rmt, bptt_depth={args.bptt_depth}")
        for row in memory:
            print(f"{row['segments']:>5} segments: {row['peak_gib']:.2f} GiB, step {row['step_s']:.3f} s")

    lucidrains = measured("the race against lucidrains", args.versus_lucidrains, lucidrains_rows)
    if lucidrains:
        print(f"\nRMT against lucidrains' recurrent-memory-transformer, {args.batch_size} x {args.segments} segments")
        for row in lucidrains:
            print(f"{row['model']:<24} {row['step_s']:>8.3f} s (spread {row['spread']:.2f}) "
                  f"{row['tokens_per_s']:>9.0f} tokens/s  x{row['memlm_speedup']:.2f} memlm's step time")

    evaluation = measured("the evaluation", args.evaluation, evaluation_rows)
    if evaluation:
        print(f"\nevaluation per segment against the bare backbone, {args.batch_size} x {args.eval_segments} segments")
        for row in evaluation:
            print(f"{row['head']:<17} {row['eval_s_per_segment'] * 1e3:>8.2f} ms  bare "
                  f"{row['bare_s_per_segment'] * 1e3:.2f} ms  x{row['ratio']:.2f}  "
                  f"(+{row['extra_positions']} positions: x{row['ratio_per_position']:.2f} per position)")

    generation = measured("the generation", args.generation, generation_rows)
    if generation:
        print(f"\ngreedy generation, SmolLM2-135M, batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new "
              f"tokens, median of {args.steps}")
        for row in generation:
            print(f"{row['generator']:<40} {row['seconds']:>7.3f} s (spread {row['spread']:.2f})  "
                  f"x{row['vs_hf_generate']:.2f} Hugging Face's")

    args.out.mkdir(parents=True, exist_ok=True)
    for head, table in (profile_tables(args, device) if args.profile else {}).items():
        print(f"\nprofile of one training step, {head}\n{table}")
        (args.out / f"profile_{head}.txt").write_text(table)
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    result = {"machine": {**machine(), "device": name}, "config": config, "matmul_tflops": peak,
              "nominal_tflops": nominal, "training": training, "memory": memory,
              "lucidrains": lucidrains, "evaluation": evaluation, "generation": generation,
              "size_overrides": SIZES[args.size], "others_cores": loads}
    path = args.out / "bench_speed.json"
    write_json(path, result)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
