"""The benchmarks' own measuring instruments, on cases whose answer is known."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "meta_step_speed.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("meta_step_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_measure_reproduces_known_peaks():
    load_benchmark().check_memory_measure(torch.device("cpu"))


def test_the_memory_measure_sees_a_loop_that_frees_as_it_goes():
    bench = load_benchmark()
    from metalib.models import SinusoidMLP, parameters_of

    torch.manual_seed(0)
    model = SinusoidMLP()
    params = parameters_of(model)
    tasks = bench.sample(torch.Generator().manual_seed(0), torch.device("cpu"), n=20)
    one_at_a_time = bench.peak_allocated_mb(
        lambda: bench.metalib_loop(model, params, tasks, "reptile", 5), torch.device("cpu")
    )
    all_at_once = bench.peak_allocated_mb(
        lambda: bench.metalib_vmap(model, params, tasks, "maml", 5), torch.device("cpu")
    )
    assert 0 < one_at_a_time < all_at_once, (one_at_a_time, all_at_once)
