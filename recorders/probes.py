"""Probes: the torch side of recording, usable on anyone's training loop.

``watch(model, optimizer)`` derives a :class:`~recorders.recording_format.Layout` from the optimizer's parameter
groups, the :class:`~recorders.gates.Gate` modules inside ``model`` and the prompt parameters you name, and returns
a :class:`Probe`. Call :meth:`Probe.after_backward` once per optimiser step, after ``loss.backward()`` (and after
``scaler.unscale_(optimizer)`` under AMP), before gradient clipping and ``optimizer.step()``::

    probe = watch(model, optimizer, prompts={"ctx": model.ctx})
    with RecordingWriter(path, probe.layout, config=cfg, method="coop", seed=0, device="cuda") as writer:
        probe.attach(writer)
        for step, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            probe.after_backward(step, epoch, scheduler.get_last_lr()[0], {"total": loss})
            optimizer.step(); optimizer.zero_grad()
        probe.close()

Per step, the raw measurements (losses, gradient norms, gate logits and gradients, prompt tokens and their
gradients) are written on the model's device into a preallocated buffer of ``block`` rows, with no host
synchronisation. The buffer moves to the host in one copy when it is full or on :meth:`Probe.flush`, and the
recorded series (σ, σ', norms, cosines) are derived from it there in float64. Strided full gradients are cloned
on the device and move with the block.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from recorders import recording_format as rf
from recorders.gates import Gate, find_gates

_EMPTY_PROMPTS: Mapping[str, nn.Parameter] = {}
_EMPTY_TENSORS: Mapping[str, tuple[nn.Parameter, int]] = {}


@dataclass
class _GroupProbe:
    name: str
    params: list[nn.Parameter]


@dataclass
class _GateProbe:
    spec: rf.GateSetSpec
    gate: Gate


def gate_set_name(qualified: str) -> str:
    """The recording's name for the gate set of module ``qualified`` (``length_gates.0`` → ``length_gates_0``)."""
    return qualified.replace(".", "_") or "gates"


def _group_specs(optimizer: torch.optim.Optimizer, gate_params: set[int],
                 prompt_params: set[int]) -> list[rf.GroupSpec]:
    base_lr = float(optimizer.defaults.get("lr", 0.0)) or 1.0
    specs = []
    for i, group in enumerate(optimizer.param_groups):
        ids = {id(p) for p in group["params"]}
        role = group.get("role") or ("gate" if ids and ids <= gate_params else
                                     "prompt" if ids and ids <= prompt_params else "other")
        lr = float(group.get("initial_lr", group.get("lr", base_lr)))
        specs.append(rf.GroupSpec(
            name=str(group.get("name") or f"group{i}"), role=role,
            n_params=sum(p.numel() for p in group["params"]), lr_scale=lr / base_lr,
            weight_decay=float(group.get("weight_decay", 0.0)), momentum=float(group.get("momentum", 0.0)),
            dampening=float(group.get("dampening", 0.0)), nesterov=bool(group.get("nesterov", False))))
    return specs


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, *,
          prompts: Mapping[str, nn.Parameter] = _EMPTY_PROMPTS, loss_terms: Sequence[str] = ("total",),
          tensors: Mapping[str, tuple[nn.Parameter, int]] = _EMPTY_TENSORS, block: int = 256) -> Probe:
    """Find what to record in ``model`` and ``optimizer`` and return a :class:`Probe` for it.

    - parameter groups: ``optimizer.param_groups`` (optional keys ``name`` and ``role``; otherwise ``group{i}`` and
      ``gate``/``prompt``/``other`` by which parameters the group holds) with their optimiser settings;
    - gate sets: every :class:`Gate` in ``model``, named by its qualified name with ``.`` → ``_`` (``gates`` for a
      bare Gate); a gate whose ``prompt`` names a key of ``prompts`` with ``n_gates`` tokens records the imbalance
      decomposition factors;
    - prompts: ``name → parameter`` of shape ``(n_tokens, ...)``; per-token gradient and value norms;
    - tensors: ``name → (parameter, stride)``; the full gradient every ``stride`` steps;
    - ``loss_terms``: the keys of the ``losses`` mapping given to :meth:`Probe.after_backward`.
    """
    if block < 1:
        raise ValueError("block must be >= 1")
    gates = find_gates(model)
    gate_params = {id(p) for g in gates.values() for p in g.parameters()}
    prompt_params = {id(p) for p in prompts.values()}
    groups = _group_specs(optimizer, gate_params, prompt_params)
    group_of = {id(p): spec.name for spec, g in zip(groups, optimizer.param_groups, strict=True)
                for p in g["params"]}

    gate_probes = []
    for qualified, gate in gates.items():
        prompt = prompts.get(gate.prompt) if gate.prompt else None
        if prompt is not None and prompt.shape[0] != gate.n_gates:
            prompt = None
        first = next(gate.parameters(), None)
        static = gate.logits is not None
        spec = rf.GateSetSpec(
            name=gate_set_name(qualified), n_gates=gate.n_gates, kind=gate.kind,
            prompt=gate.prompt if prompt is not None else "", decomposition=prompt is not None,
            group=group_of.get(id(first), "") if first is not None else "",
            init_logit=tuple(gate.logits.detach().double().cpu().tolist()) if static else ())
        gate_probes.append(_GateProbe(spec, gate))
    layout = rf.Layout(
        loss_terms=tuple(loss_terms), groups=tuple(groups), gate_sets=tuple(g.spec for g in gate_probes),
        prompts=tuple(rf.PromptSpec(name, int(p.shape[0]), group_of.get(id(p), "")) for name, p in prompts.items()),
        tensors=tuple(rf.TensorSpec(name, tuple(p.shape), stride) for name, (p, stride) in tensors.items()))
    group_probes = [_GroupProbe(spec.name, list(g["params"]))
                    for spec, g in zip(groups, optimizer.param_groups, strict=True)]
    return Probe(layout, group_probes, gate_probes, dict(prompts), dict(tensors), block)


class Probe:
    """Measures every step on the device and hands blocks of rows to a :class:`RecordingWriter`.

    ``layout`` declares what the rows hold; create the writer with it. Per step, :meth:`after_backward` gathers the
    raw measurements into one row of a ``(block, width)`` float32 device buffer with a single ``torch.cat``: loss
    terms, one ``torch._foreach_norm`` over every gradient, static gate logits and their gradients, batch statistics
    of instance gates, and the values and gradients of the prompt tokens. :meth:`flush` copies the block to the host
    once and derives the recorded series from it in float64 (σ, σ', group norms, per-token norms, cosines).
    Memory: ``block × width × 4`` bytes on the device, where ``width`` counts twice every prompt element.
    """

    def __init__(self, layout: rf.Layout, groups: list[_GroupProbe], gates: list[_GateProbe],
                 prompts: dict[str, nn.Parameter], tensors: dict[str, tuple[nn.Parameter, int]], block: int) -> None:
        self.layout = layout
        self.block = block
        self._groups = groups
        self._params = [p for g in groups for p in g.params]
        self._gates = gates
        self._prompts = prompts
        self._tensors = tensors
        widths = {f"loss/{term}": 1 for term in layout.loss_terms}
        widths["param_norms"] = len(self._params)
        for g in gates:
            widths[f"gate/{g.spec.name}"] = (2 if g.gate.logits is not None else 5) * g.gate.n_gates
        for name, prompt in prompts.items():
            widths[f"prompt/{name}/value"] = widths[f"prompt/{name}/grad"] = prompt.numel()
        self._slots: dict[str, slice] = {}
        start = 0
        for key, width in widths.items():
            self._slots[key] = slice(start, start + width)
            start += width
        device = self._params[0].device if self._params else torch.device("cpu")
        self._buffer = torch.full((block, start), float("nan"), dtype=torch.float32, device=device)
        self._nan = torch.full((max(widths.values(), default=1),), float("nan"), dtype=torch.float32, device=device)
        self._nan_scalar = self._nan[0]
        self._host: list[tuple[int, int, float]] = []  # (step, epoch, lr) of each buffered row
        self._strided: list[tuple[str, int, torch.Tensor]] = []
        self._writer: rf.RecordingWriter | None = None
        self._flush_seconds = float("inf")
        self._last_flush = time.monotonic()
        for g in gates:
            if g.gate.kind == "instance":
                g.gate.capture = True

    def attach(self, writer: rf.RecordingWriter) -> None:
        """Send blocks to ``writer``; its layout must declare every series of :attr:`layout`.

        Blocks go out when ``block`` rows are buffered or ``writer.flush_seconds`` have passed since the last one,
        so slow steps still reach the file (and a live viewer) in time.
        """
        missing = set(self.layout.step_series()) - set(writer.layout.step_series())
        if missing:
            raise ValueError(f"the writer's layout lacks {sorted(missing)}; create it with probe.layout")
        self._writer = writer
        self._flush_seconds = writer.flush_seconds

    # ------------------------------------------------------------------ per step, on the device
    def _grad_or_nan(self, param: torch.Tensor) -> torch.Tensor:
        return self._nan[:param.numel()] if param.grad is None else param.grad

    def _instance_stats(self, gate: Gate) -> list[torch.Tensor]:
        """Batch mean of logit, σ and σ'; batch sum of ∂L/∂g; population std of σ — each ``(n_gates,)``."""
        n = gate.n_gates
        captured = gate.last_logits
        if captured is None:
            return [self._nan[:5 * n]]
        logits = captured.detach().reshape(-1, n).float()
        values = torch.sigmoid(logits)
        value_std, value_mean = torch.std_mean(values, dim=0, correction=0)
        logit_mean, dsigmoid_mean = torch.stack([logits, values * torch.sigmoid(-logits)]).mean(1)  # σ' = σ(g)σ(−g)
        grad = self._nan[:n] if captured.grad is None else captured.grad.reshape(-1, n).float().sum(0)
        return [logit_mean, value_mean, dsigmoid_mean, grad, value_std]

    def _raw_pieces(self, losses: Mapping[str, torch.Tensor | float]) -> list[torch.Tensor]:
        """One row of raw measurements in slot order (see :attr:`_slots`), as 1-D tensors (few kernel launches:
        one stack for the losses, one ``_foreach_norm`` and one stack for every gradient norm)."""
        nan = self._nan_scalar
        terms = [losses.get(term) for term in self.layout.loss_terms]
        pieces = [torch.stack([nan if t is None else t if isinstance(t, torch.Tensor) else
                               torch.as_tensor(t, dtype=torch.float32, device=nan.device) for t in terms]).reshape(-1)]
        grads = [p.grad for p in self._params if p.grad is not None]
        norms = torch._foreach_norm(grads) if grads else []
        if len(grads) < len(self._params):  # parameters without a gradient this step are marked NaN
            found = iter(norms)
            norms = [nan if p.grad is None else next(found) for p in self._params]
        if norms:
            pieces.append(torch.stack(norms).float())
        for g in self._gates:
            if g.gate.logits is not None:
                pieces += [g.gate.logits, self._grad_or_nan(g.gate.logits)]
            else:
                pieces += self._instance_stats(g.gate)
        for prompt in self._prompts.values():
            pieces += [prompt.flatten(), self._grad_or_nan(prompt).flatten()]
        return pieces

    def after_backward(self, step: int, epoch: int, lr: float, losses: Mapping[str, torch.Tensor]) -> None:
        """Measure this step's losses, gradients, gates and prompts into the device buffer (no host sync).

        ``losses`` maps loss term → scalar tensor (terms missing from it are NaN). ``step``, ``epoch`` and ``lr``
        are Python numbers. A full buffer is flushed (the only point where data moves to the host).
        """
        with torch.no_grad():
            torch.cat(self._raw_pieces(losses), out=self._buffer[len(self._host)])
        self._host.append((int(step), int(epoch), float(lr)))
        for name, (param, stride) in self._tensors.items():
            if step % stride == 0 and param.grad is not None:
                self._strided.append((name, int(step), param.grad.detach().clone()))
        if len(self._host) == self.block or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    # ------------------------------------------------------------------ per block, on the host
    def _derive(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The recorded per-step series of ``n`` rows from the raw block ``(n, width)`` (computed in float64)."""
        n = len(raw)
        col = {key: raw[:, s].astype(np.float64) for key, s in self._slots.items()}
        out = {rf.loss_path(term): col[f"loss/{term}"][:, 0] for term in self.layout.loss_terms}
        squares = col["param_norms"] ** 2
        start = 0
        for group in self._groups:
            block = squares[:, start:start + len(group.params)]
            start += len(group.params)
            out[rf.grad_norm_path(group.name)] = np.where(np.isnan(block).all(1), np.nan,
                                                          np.sqrt(np.nansum(block, 1)))
        tokens = {name: (col[f"prompt/{name}/value"].reshape(n, p.shape[0], -1),
                         col[f"prompt/{name}/grad"].reshape(n, p.shape[0], -1)) for name, p in self._prompts.items()}
        for g in self._gates:
            measured = col[f"gate/{g.spec.name}"]
            if g.gate.logits is not None:  # static gates: logit and grad were measured, σ and σ' follow
                logit, grad = np.split(measured, 2, axis=1)
                series = {"logit": logit, "value": expit(logit), "dsigmoid": rf.dsigmoid_from_logit(logit),
                          "grad": grad}
            else:
                logit, value, dsig, grad, std = np.split(measured, 5, axis=1)
                series = {"logit": logit, "value": value, "dsigmoid": dsig, "grad": grad, "value_mean": value,
                          "value_std": std}
            if g.spec.decomposition:
                value, grad = tokens[g.spec.prompt]
                series["prompt_norm"] = np.linalg.norm(value, axis=2)
                series["cosine"] = _cosine(grad, value)
            out.update({rf.gate_path(g.spec.name, k): v for k, v in series.items()})
        for name, (value, grad) in tokens.items():
            out[rf.prompt_path(name, "grad_norm")] = np.linalg.norm(grad, axis=2)
            out[rf.prompt_path(name, "norm")] = np.linalg.norm(value, axis=2)
        return out

    def flush(self) -> None:
        """Move the buffered rows (one device → host copy) and strided tensors to the writer."""
        if self._writer is None:
            raise RuntimeError("attach a RecordingWriter before recording (probe.attach(writer))")
        n = len(self._host)
        if n:
            block = self._derive(self._buffer[:n].cpu().numpy())
            steps, epochs, lrs = zip(*self._host, strict=True)
            block.update({rf.STEP: np.asarray(steps, np.int64), rf.EPOCH: np.asarray(epochs), rf.LR: np.asarray(lrs)})
            self._writer.append_block(block)
            self._host.clear()
        for name, step, grad in self._strided:
            self._writer.add_tensor(name, step, grad.cpu().numpy())
        self._strided.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush the remaining rows and flush the writer's file."""
        self.flush()
        if self._writer is not None:
            self._writer.flush()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) along the last axis; 0 where either vector is zero."""
    dot = np.einsum("...d,...d->...", a, b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dot / norms
    cos[norms == 0] = 0.0  # NaN inputs (a missing gradient) stay NaN
    return cos
