"""The PyTorch peer timed beside rsjax (imported only by ``rsjax.bench --peer=torch``).

On a GPU (:func:`torch_simclr_step`), what a PyTorch user would run: torchvision ResNet,
channels_last, bf16 autocast, optionally torch.compile; SimCLR-style step (two views, NT-Xent at
tau 0.1, SGD momentum 0.9) on random input. On the CPU (:func:`torch_cpu_simclr_step`), the same
model as rsjax's (the reference ResNet of :mod:`rsjax.export.torch_resnet`, which has every rsjax
architecture, with rsjax's SimCLR projection head), float32, torch eager, as many threads as the
cores JAX uses. images/s counts both views (2 x batch per step).
"""

from __future__ import annotations

import os
import time

from rsjax.export import torch_resnet


def _median(times: list[float]) -> float:
    times = sorted(times)
    return times[len(times) // 2]


def _simclr_update(embed, opt, n: int, temperature: float, device: str):
    """``step(*inputs) -> loss``: NT-Xent over the 2n embeddings ``embed(*inputs)`` (view 1's n
    rows, then view 2's), backward, one optimizer step."""
    import torch  # optional dependency (torch): only for the PyTorch side

    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(device)
    eye = torch.eye(2 * n, device=device, dtype=torch.bool)

    def step(*xs):
        z = torch.nn.functional.normalize(embed(*xs), dim=1)
        sim = (z @ z.t() / temperature).masked_fill(eye, -1e9)
        loss = torch.nn.functional.cross_entropy(sim, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def _timed(fn, args, *, steps: int, warmup: int, sync=lambda: None) -> tuple[float, float, object]:
    """(first call s, median step s over ``steps`` after ``warmup``, last output)."""
    t0 = time.perf_counter()
    out = fn(*args)
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        out = fn(*args)
    sync()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = fn(*args)
        sync()
        times.append(time.perf_counter() - t)
    return first, _median(times), out


def torch_cpu_simclr_step(
    *,
    arch: str,
    batch_size: int,
    image_size: int,
    in_channels: int,
    stem: str,
    proj_hidden_dim: int,
    proj_dim: int,
    proj_last_bn: bool,
    temperature: float,
    lr: float,
    weight_decay: float,
    steps: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    compile_: bool = False,
) -> dict:
    """One SimCLR train step of rsjax's model in torch on the CPU, timed: encoder (the reference
    ResNet), head Linear -> BN -> ReLU -> Linear (-> BN without centring when ``proj_last_bn``),
    NT-Xent over the 2B views at ``temperature``, SGD (momentum 0.9, ``weight_decay``).
    ``threads`` (default: the cores this process may run on, which XLA:CPU also uses)."""
    try:
        import torch  # optional dependency (torch): only for the PyTorch side
    except Exception as e:  # noqa: BLE001
        return {"error": f"torch unavailable: {e!r}"[:300]}

    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    enc = torch_resnet.reference_resnet(arch, in_channels, stem=stem)
    layers = [
        torch.nn.Linear(enc.num_features, proj_hidden_dim, bias=False),
        torch.nn.BatchNorm1d(proj_hidden_dim),
        torch.nn.ReLU(),
        torch.nn.Linear(proj_hidden_dim, proj_dim, bias=not proj_last_bn),
    ]
    if proj_last_bn:
        layers.append(torch.nn.BatchNorm1d(proj_dim, affine=True))
    head = torch.nn.Sequential(*layers)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = batch_size
    step = _simclr_update(lambda x: head(enc(x)[0]), opt, n, temperature, "cpu")
    fn = torch.compile(step) if compile_ else step
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * n, in_channels, image_size, image_size, generator=g)  # both views, one forward
    enc.train(), head.train()
    first, med, loss = _timed(fn, (x,), steps=steps, warmup=warmup)
    return {
        "framework": "torch " + torch.__version__,
        "mode": "compiled" if compile_ else "eager",
        "images_per_s": 2 * n / med,
        "step_ms_median": 1e3 * med,
        "first_call_s": first,
        "threads": threads,
        "device": "cpu",
        "final_loss": float(loss),
    }


def torch_simclr_step(
    *,
    arch: str,
    batch_size: int,
    image_size: int,
    in_channels: int = 3,
    steps: int = 20,
    warmup: int = 5,
    compile_: bool = True,
) -> dict:
    try:
        import torch  # optional dependency (torch): only for the PyTorch side
        import torchvision  # optional dependency (torchvision)
    except Exception as e:  # noqa: BLE001
        return {"error": f"torch/torchvision unavailable: {e!r}"[:300]}
    if not torch.cuda.is_available():
        return {"error": "no CUDA device for the torch peer"}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    m = getattr(torchvision.models, arch)(num_classes=128)
    if in_channels != 3:
        m.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    m = m.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    n = batch_size

    def embed(x1, x2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return torch.cat([m(x1), m(x2)]).float()

    step = _simclr_update(embed, opt, n, 0.1, "cuda")
    fn = torch.compile(step) if compile_ else step
    x1 = torch.randn(n, in_channels, image_size, image_size, device="cuda").to(memory_format=torch.channels_last)
    x2 = torch.randn(n, in_channels, image_size, image_size, device="cuda").to(memory_format=torch.channels_last)
    first, med, _ = _timed(fn, (x1, x2), steps=steps, warmup=warmup, sync=torch.cuda.synchronize)
    return {
        "framework": "torch " + torch.__version__,
        "mode": "compiled" if compile_ else "eager",
        "images_per_s": 2 * n / med,
        "step_ms_median": 1e3 * med,
        "first_call_s": first,
        "device": torch.cuda.get_device_name(),
    }
