"""K-matrix parameters train and stay synchronised under torch.distributed (2 CPU processes, gloo).

fairseq's own launcher is GPU-only on this stack (it spawns no process without CUDA), so
the model is wrapped directly in the two data-parallel wrappers fairseq uses:
torch's DistributedDataParallel (``--ddp-backend pytorch_ddp``, the default) and
fairseq's LegacyDistributedDataParallel (``--ddp-backend legacy_ddp``, used by the
pay-less-attention recipe). Each rank sees different data; after a few Adam steps the
twiddles must have moved and be bit-identical on both ranks.
"""

import gc
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("fairseq")

from conftest import tiny_model_args

ARGS = [
    *tiny_model_args("kaleidoscope_lightconv", dim=16, layers=(1, 1), kernels=("[3]", "[5]")),
    "--kmatrix-layers", "encoder.ffn,decoder.all", "--dropout", "0.1",
]  # fmt: skip
VOCAB = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BACKENDS = ("pytorch_ddp", "legacy_ddp")


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import fairseq_kaleidoscope.models  # noqa: F401  (registers the architectures)
        from fairseq_kaleidoscope.models.builder import build_model_from_args

        for backend in BACKENDS:  # one process group for both wrappers keeps the test fast
            torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
            model, _ = build_model_from_args(ARGS, VOCAB)
            result = _train(model, rank, world, backend)
            if rank == 0:
                torch.save(result, os.path.join(out_dir, f"{backend}.pt"))
        # Free the DDP wrappers (reference cycles) and line the ranks up before the process
        # group goes: a wrapper collected after destroy_process_group() can abort the worker
        # ("terminate called without an active exception", seen once in CI).
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train(model: torch.nn.Module, rank: int, world: int, backend: str) -> dict:
    from fairseq.distributed import LegacyDistributedDataParallel

    from fairseq_kaleidoscope.kmatrix import KaleidoscopeLinear

    twiddles = {n: m.twiddle for n, m in model.named_modules() if isinstance(m, KaleidoscopeLinear)}
    initial = {n: t.detach().clone() for n, t in twiddles.items()}
    if backend == "pytorch_ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    else:
        wrapped = LegacyDistributedDataParallel(model, dist.group.WORLD)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        src = torch.randint(4, VOCAB, (4, 6), generator=gen)
        tgt = torch.randint(4, VOCAB, (4, 5), generator=gen)
        logits, _ = wrapped(src, torch.full((4,), 6), tgt)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tgt.reshape(-1))
        opt.zero_grad()
        loss.backward()
        if backend == "legacy_ddp":
            wrapped.all_reduce_grads()
        opt.step()
    flat = torch.cat([t.detach().reshape(-1) for t in twiddles.values()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    moved = min((twiddles[n].detach() - initial[n]).abs().max().item() for n in twiddles)
    return {"gathered": gathered, "moved": moved, "n": len(twiddles)}


@pytest.fixture(scope="module")
def results() -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(2, _free_port(), out_dir), nprocs=2, join=True)
        return {b: torch.load(os.path.join(out_dir, f"{b}.pt")) for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmatrix_parameters_train_and_stay_synchronised(results: dict, backend: str) -> None:
    result = results[backend]
    assert result["n"] == 2 + 9  # encoder fc1/fc2 + every decoder linear layer
    assert result["moved"] > 0  # every twiddle received gradient updates
    rank0, rank1 = result["gathered"]
    assert torch.equal(rank0, rank1)
