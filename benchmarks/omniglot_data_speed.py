"""Benchmark: building the Omniglot cache, and building meta-batches of episodes.

Run from the repository root with the archives in the data directory (``make benchmark``)::

    METALIB_DATA=path/to/omniglot python benchmarks/omniglot_data_speed.py [--threads 2]

1. Cache build: ``omniglot.load`` into an empty temporary cache folder, from the archives
   (read, check, decode 32,460 PNGs, resize to 28×28, save). Target: under 60 s on 2 CPU
   cores.
2. Episodes: milliseconds per meta-batch of 32 episodes (5-way 1-shot with 15 queries, and
   20-way 5-shot with 15 queries) from ``EpisodeSampler.sample`` (one tensor on the device,
   batched indexing) and from a per-episode loop written the way most course code samples
   (Python ``random`` choices, one image at a time, then ``torch.stack``), on every device
   present, in the same process. Targets for 5-way 1-shot: under 10 ms on 2 CPU cores and
   under 1 ms on a GPU.

It prints a table and one JSON line with every number.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import tempfile
import time

import torch

from metalib import runtime
from metalib.data import episodes, omniglot, splits

TASKS = 32
SHAPES = ((5, 1, 15), (20, 5, 15))  # (n_way, k_shot, k_query)


def loop_meta_batch(data, classes, n_way, k_shot, k_query, rng, device):
    """The usual per-episode sampler: Python choices, one image at a time."""
    grouped = data.by_character()
    batch = []
    for _ in range(TASKS):
        support, query = [], []
        for label, c in enumerate(rng.sample(range(len(classes)), n_way)):
            character, turns = int(classes.characters[c]), int(classes.rotations[c])
            for i, d in enumerate(rng.sample(range(20), k_shot + k_query)):
                image = torch.rot90(grouped[character, d], turns, dims=(0, 1)).float() / 255
                (support if i < k_shot else query).append((image[None], label))
        batch.append([torch.stack([x for x, _ in s]).to(device) for s in (support, query)])
    return batch


def milliseconds(function, device, seconds=1.0):
    function()  # warm-up
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function()
        repeats += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        data = omniglot.load(cache_dir=cache, download=False)
        build_s = time.perf_counter() - start
    results = {"threads": args.threads, "cpu": platform.processor() or platform.machine()}
    results["cache_build_s"] = round(build_s, 2)
    print(
        f"cache build: {build_s:.1f} s for {len(data.images):,} images (target < 60 s on 2 cores)"
    )

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    classes = splits.class_split(data, split="train", download=False)
    print(f"\n{'device':<8}{'episodes':<22}{'batched ms':>12}{'loop ms':>10}{'ratio':>8}")
    for device in devices:
        generator = torch.Generator().manual_seed(0)  # indices on the CPU, as in training
        rng = random.Random(0)
        for n_way, k_shot, k_query in SHAPES:
            sampler = episodes.EpisodeSampler(
                data, classes, n_way=n_way, k_shot=k_shot, k_query=k_query, device=device
            )
            batched = milliseconds(
                functools.partial(sampler.sample, TASKS, generator=generator), device, args.seconds
            )
            looped = milliseconds(
                functools.partial(
                    loop_meta_batch, data, classes, n_way, k_shot, k_query, rng, device
                ),
                device,
                args.seconds,
            )
            name = f"{TASKS}× {n_way}-way {k_shot}-shot"
            ratio = looped / batched
            print(f"{device.type:<8}{name:<22}{batched:>12.3f}{looped:>10.1f}{ratio:>7.0f}×")
            results[f"{device.type}_{n_way}way_{k_shot}shot_ms"] = {
                "batched": round(batched, 4),
                "loop": round(looped, 2),
            }
    if torch.cuda.is_available():
        results["gpu"] = runtime.describe_device(torch.device("cuda"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
