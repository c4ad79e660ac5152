"""Where the PPO recipe's optimisation runs, and the distributed helpers it needs.

Two backends share one interface (``device``, ``module``, ``forward``, ``backward``, ``step``,
``set_lr_factor``, ``save``, ``load``), so ``bench/train/ppo.py`` reads the same on a laptop and on
a GPU node:

- :class:`TorchBackend`: plain torch in one process (fp32), AdamW, gradient accumulation over
  micro-batches, gradient-norm clipping.
- :class:`DeepSpeedBackend`: a DeepSpeed engine (ZeRO-2, CPU optimiser offload, fp16 with dynamic
  loss scaling as set in the profile's JSON, whose ``auto`` values :func:`deepspeed_config` fills
  from the PPO section). DeepSpeed is imported only on this path (it is slow to import).

Why here and not in the recipe: the optimiser plumbing and the process-group details (which device
a collective's tensors must live on, what non-main ranks write) are independent of what PPO
computes; keeping them apart lets the recipe read top to bottom.

Used by ``make ppo PROFILE=...`` (``bench ppo``) and the GPU perf units (``bench.perf.gpu``);
tested in ``tests/test_ppo.py`` (``python -m pytest tests/test_ppo.py -q``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from bench.config import PPOSection
from bench.distributed import is_initialized, is_main_process
from bench.records import RecordError
from bench.train.rollout import PolicyWithValueHead, Samples, assemble

# =============================================================================== optimiser backends


def param_groups(module: PolicyWithValueHead, section: PPOSection) -> list[dict]:
    head = [p for p in module.value_head.parameters()]
    policy = [p for p in module.policy.parameters() if p.requires_grad]
    return [{"params": policy, "lr": section.learning_rate, "weight_decay": section.weight_decay},
            {"params": head, "lr": section.critic_learning_rate, "weight_decay": 0.0}]


class TorchBackend:
    """Plain torch: AdamW, gradient accumulation over micro-batches, gradient-norm clipping. Under
    several ranks (a launcher without ``ppo.deepspeed``: gloo on CPU, NCCL on GPUs) the gradients are
    averaged over the ranks before clipping, as DDP does, so every rank takes the same step."""

    def __init__(self, module: PolicyWithValueHead, section: PPOSection):
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.module = module.to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(module, section))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.gas = section.mini_batch_size // section.batch_size
        self.max_grad_norm = section.max_grad_norm
        self._micro = 0

    def forward(self, *args, **kw):
        return self.module(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.gas).backward()

    def step(self) -> float | None:
        """Call after every micro-batch; steps at the accumulation boundary and returns the grad norm."""
        self._micro += 1
        if self._micro % self.gas:
            return None
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        average_gradients(params)
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def set_lr_factor(self, factor: float) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * factor

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.module.named_parameters() if p.requires_grad}

    def save(self, folder: Path) -> None:
        """Rank 0 writes (every rank holds the same weights and optimiser state)."""
        from safetensors.torch import save_file

        if not is_main_process():
            return
        save_file(self.trainable_state(), str(folder / "trainable.safetensors"))
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(folder / "trainable.safetensors"))
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        expected = set(self.trainable_state())
        if set(state) != expected or unexpected:
            raise RecordError(f"{folder}: checkpoint does not match the trainable parameters; delete "
                              f"{folder.parent} to restart")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True))


class DeepSpeedBackend:
    """The same interface over a DeepSpeed engine (ZeRO-2, CPU optimiser offload, fp16 loss scaling
    as set in the JSON). ``engine.step`` is called after every micro-batch: DeepSpeed itself steps
    at the accumulation boundary, scales the loss by 1/gas, clips and skips overflowing fp16 steps."""

    def __init__(self, module: PolicyWithValueHead, section: PPOSection, world: int):
        import deepspeed  # imported only on this path: it is slow to import

        conf = deepspeed_config(section, world, module.value_head.in_features)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, model_parameters=param_groups(module, section), config=conf)
        self.device = self.engine.device
        self.module = self.engine.module
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]

    def forward(self, *args, **kw):
        return self.engine(*args, **kw)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    def set_lr_factor(self, factor: float) -> None:
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * factor

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag="engine", exclude_frozen_parameters=True)

    def load(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder), tag="engine", load_module_strict=False)


def deepspeed_config(section: PPOSection, world: int, hidden_size: int) -> dict:
    """The profile's DeepSpeed JSON with every ``"auto"`` filled from the PPO section (as the HF
    integration fills them for Trainer); an ``auto`` left unfilled, or ZeRO stage 3, is an error."""
    from bench.config import ConfigError

    conf = json.loads(Path(section.deepspeed).read_text())
    gas = section.mini_batch_size // section.batch_size
    zero = conf.get("zero_optimization", {})
    if int(zero.get("stage", 0)) > 2:
        raise ConfigError(f"ppo.deepspeed={section.deepspeed}: ZeRO stage {zero['stage']} is not supported by the PPO "
                          "recipe (generation and saving need whole parameters); use ZeRO-2 (zero2_offload.json)")

    def fill(node: dict, values: dict) -> None:
        for k, v in values.items():
            if node.get(k, "auto") == "auto":
                node[k] = v

    fill(conf, {"train_micro_batch_size_per_gpu": section.batch_size, "gradient_accumulation_steps": gas,
                "train_batch_size": section.batch_size * gas * world, "gradient_clipping": section.max_grad_norm})
    if "fp16" in conf:
        fill(conf["fp16"], {"enabled": section.fp16})
    if "bf16" in conf:
        fill(conf["bf16"], {"enabled": False})
    conf.setdefault("optimizer", {"type": "AdamW", "params": {}})
    fill(conf["optimizer"].setdefault("params", {}),
         {"lr": section.learning_rate, "weight_decay": section.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8})
    if zero:
        fill(zero, {"reduce_bucket_size": hidden_size * hidden_size})
    conf.pop("scheduler", None)  # the recipe sets the learning rate itself (lr_factor)
    left = _auto_paths(conf)
    if left:
        raise ConfigError(f"ppo.deepspeed={section.deepspeed}: cannot fill 'auto' at {', '.join(left)}")
    return conf


def _auto_paths(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def make_backend(module: PolicyWithValueHead, section: PPOSection, world: int):
    if section.deepspeed:
        return DeepSpeedBackend(module, section, world)
    return TorchBackend(module, section)


# =============================================================================== distributed helpers


def dist_info(section: PPOSection) -> tuple[int, int]:
    """(rank, world size), with the process group up when there is more than one rank or DeepSpeed
    is configured. The launcher's variables come from :func:`bench.distributed.ensure_process_group_env`
    (a world of one gets them only with ``ppo.deepspeed``: DeepSpeed's own discovery would otherwise
    try MPI and die without mpi4py). DeepSpeed inits its own group; the torch backend gets gloo on
    CPU and NCCL on GPUs."""
    from bench.distributed import ensure_process_group_env

    env = ensure_process_group_env(set_single_process=bool(section.deepspeed))
    if section.deepspeed:
        import deepspeed

        deepspeed.init_distributed()
    elif env.world_size > 1 and not is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return env.rank, env.world_size


def per_rank_section(section: PPOSection, world: int, group_size: int = 1) -> PPOSection:
    """The PPO section one of ``world`` ranks runs with: ``rollout_prompts`` and ``mini_batch_size``
    are *global* (one step's rollouts, one optimiser step's sequences, at any world size), so each
    rank samples ``rollout_prompts / world`` rollouts (whole groups) and updates on mini-batches of
    ``mini_batch_size / world``, in micro-batches of at most ``batch_size``. A world of one changes
    nothing; a size the ranks cannot share evenly is a ConfigError naming the key."""
    from bench.config import ConfigError

    if world <= 1:
        return section
    if section.rollout_prompts % (world * group_size):
        raise ConfigError(f"ppo.rollout_prompts={section.rollout_prompts} is the global rollout batch of a step: "
                          f"{world} ranks x group_size {group_size} must divide it")
    if section.mini_batch_size % world:
        raise ConfigError(f"ppo.mini_batch_size={section.mini_batch_size} is the global batch of an optimiser step: "
                          f"{world} ranks must divide it")
    mini = section.mini_batch_size // world
    micro = min(section.batch_size, mini)
    if mini % micro:
        raise ConfigError(f"ppo.batch_size={section.batch_size} must divide a rank's share of ppo.mini_batch_size "
                          f"({section.mini_batch_size} / {world} ranks = {mini})")
    return dataclasses.replace(section, rollout_prompts=section.rollout_prompts // world, mini_batch_size=mini,
                               batch_size=micro)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Mean of each gradient over the ranks (in place); nothing without a process group."""
    if not is_initialized() or torch.distributed.get_world_size() == 1:
        return
    world = torch.distributed.get_world_size()
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(world)


def collective_device(backend: str) -> torch.device:
    """Where a collective's tensors must live: NCCL moves only CUDA tensors (a CPU tensor fails with "No
    backend type associated with device type cpu", seen on an H200 under DeepSpeed), gloo CPU ones."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenation of ``x`` (B,) over ranks (itself in one process), on ``x``'s device. The score
    models' outputs may sit on the CPU while the process group is NCCL, so the values travel through
    the backend's device."""
    if not is_initialized():
        return x
    y = x.detach().to(collective_device(torch.distributed.get_backend())).contiguous()
    parts = [torch.empty_like(y) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, y)
    return torch.cat(parts).to(x.device)


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """All-reduce sum of ``x`` over the ranks, on ``x``'s device (through the backend's device)."""
    y = x.detach().to(collective_device(torch.distributed.get_backend())).clone()
    torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
    return y.to(x.device)


def step_reducer():
    """What :func:`bench.train.ppo_advantages.whiten` sums over: None in one process, else the ranks."""
    return sum_over_ranks if is_initialized() and torch.distributed.get_world_size() > 1 else None


def gather_rollout(s: Samples, tensors: dict[str, torch.Tensor], prompts: list[str], eos_ids: list[int],
                   tok) -> tuple[Samples, dict]:
    """The step's global rollout batch on every rank (what :func:`bench.train.ppo_update.ppo_update`
    splits into mini-batches): each rank's rows of ``s`` and of the per-token ``tensors`` (B, R, ...)
    (log-probs, values, advantages, returns), right-padded to the longest response of any rank (the
    pad token in the responses, 0 elsewhere: masked out) and concatenated in rank order, which is
    the order of ``prompts``, the step's global batch; masks and texts are rebuilt from the gathered
    tokens as one process builds them (``rollout.assemble``). Every rank left-padded its prompts to
    the global batch's width (``rollout.sample_responses``), so the prompt columns already agree.
    Tensor collectives only (no pickled objects). Itself in one process."""
    if not is_initialized() or torch.distributed.get_world_size() == 1:
        return s, tensors
    dev = collective_device(torch.distributed.get_backend())
    longest = torch.tensor(s.responses.shape[1], device=dev)
    torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
    R = int(longest)

    def pad(x: torch.Tensor, value) -> torch.Tensor:  # (B, r, ...) -> (B, R, ...) on every rank, then gathered
        return all_gather(torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, R - x.shape[1]), value=value))

    P = s.prompt_len
    whole = assemble(prompts, all_gather(s.input_ids[:, :P]), all_gather(s.attention_mask[:, :P]),
                     pad(s.responses, tok.pad_token_id), eos_ids, tok)
    return whole, {k: pad(v, 0.0) for k, v in tensors.items()}


def gather_episodes(episodes: dict) -> dict:
    """Per-episode lists (``ppo_metrics.episode_values``) of every rank, concatenated in rank order
    (= the step's prompt order): the record and the series describe the step's whole rollout batch
    at any world size. Itself in one process."""
    if not is_initialized():
        return episodes
    out = {}
    for k, v in episodes.items():  # float64 carries float32 and int values exactly; each keeps its type
        gathered = None if v is None else all_gather(torch.tensor(v, dtype=torch.float64)).tolist()
        out[k] = [type(v[0])(x) for x in gathered] if v else gathered
    return out

