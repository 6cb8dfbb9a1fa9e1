"""Probes: the torch side of recording, usable on anyone's training loop.

``watch(model, optimizer)`` derives a :class:`~recorders.format.Layout` from the optimizer's parameter
groups, the :class:`~recorders.methods.gates.Gate` modules inside ``model`` and the prompt parameters you name, and
returns a :class:`Probe`. Call :meth:`Probe.after_backward` once per optimiser step, after ``loss.backward()`` (and
after ``scaler.unscale_(optimizer)`` under AMP), before gradient clipping and ``optimizer.step()``::

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

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from recorders import format as rf
from recorders.methods.gates import Gate, GatedPart, find_gates

#: What a gate set's ratio factors need per gate (and input), reduced on the device when its vectors ∂L/∂ũ and u
#: exceed RAW_GRADIENT_LIMIT elements per step (smaller ones are copied whole and reduced on the host): ‖G‖², ⟨G, u⟩,
#: ‖u‖²
PRODUCTS = ("gg", "dot", "uu")
RAW_GRADIENT_LIMIT = 4096  # parameters up to this many elements have their gradient copied, its norm taken on the host
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
    qualified: str = ""

    @property
    def moves(self) -> bool:
        """Whether the instance gate's parameters are copied every step (movement attribution)."""
        return bool(self.spec.init_bias)


#: ``regularisers`` argument of :func:`watch`: gate values by qualified module name → loss terms by name
Regularisers = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def gate_set_name(qualified: str) -> str:
    """The recording's name for the gate set of module ``qualified`` (``length_gates.0`` → ``length_gates_0``)."""
    return qualified.replace(".", "_") or "gates"


def _group_specs(
    optimizer: torch.optim.Optimizer, gate_params: set[int], prompt_params: set[int]
) -> list[rf.GroupSpec]:
    base_lr = float(optimizer.defaults.get("lr", 0.0)) or 1.0
    specs = []
    for i, group in enumerate(optimizer.param_groups):
        ids = {id(p) for p in group["params"]}
        role = group.get("role") or (
            "gate" if ids and ids <= gate_params else "prompt" if ids and ids <= prompt_params else "other"
        )
        lr = float(group.get("initial_lr", group.get("lr", base_lr)))
        specs.append(
            rf.GroupSpec(
                name=str(group.get("name") or f"group{i}"),
                role=role,
                n_params=sum(p.numel() for p in group["params"]),
                lr_scale=lr / base_lr,
                weight_decay=float(group.get("weight_decay", 0.0)),
                momentum=float(group.get("momentum", 0.0)),
                dampening=float(group.get("dampening", 0.0)),
                nesterov=bool(group.get("nesterov", False)),
            )
        )
    return specs


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    prompts: Mapping[str, nn.Parameter] = _EMPTY_PROMPTS,
    loss_terms: Sequence[str] = ("total",),
    tensors: Mapping[str, tuple[nn.Parameter, int]] = _EMPTY_TENSORS,
    regularisers: Regularisers | None = None,
    block: int = 256,
) -> Probe:
    """Find what to record in ``model`` and ``optimizer`` and return a :class:`Probe` for it.

    - parameter groups: ``optimizer.param_groups`` (optional keys ``name`` and ``role``; otherwise ``group{i}`` and
      ``gate``/``prompt``/``other`` by which parameters the group holds) with their optimiser settings;
    - gate sets: every :class:`Gate` in ``model``, named by its qualified name with ``.`` → ``_`` (``gates`` for a
      bare Gate); a gate whose ``prompt`` names a key of ``prompts`` with ``n_gates`` tokens records the imbalance
      decomposition factors;
    - prompts: ``name → parameter`` of shape ``(n_tokens, ...)``; per-token gradient and value norms;
    - tensors: ``name → (parameter, stride)``; the full gradient every ``stride`` steps;
    - ``loss_terms``: the keys of the ``losses`` mapping given to :meth:`Probe.after_backward`;
    - ``regularisers``: the loss terms that act on gate values directly, as a function of the values by qualified
      gate module name (a method's ``gate_regularisers``); each term's part of ∂L/∂g is recorded per gate set it
      reaches (``grad_<term>``), evaluated on the recorded gate values when a block is flushed.

    A gate with ``vector_dim`` > 0 (applied through :meth:`Gate.gated`) records the exact ratio factors; an
    instance gate records its bias and weight movement.
    """
    if block < 1:
        raise ValueError("block must be >= 1")
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, module in model.named_modules():  # nn.Embedding(sparse=True) and the like
        if getattr(module, "sparse", False) is True and any(id(p) in optimized for p in module.parameters(False)):
            raise ValueError(
                f"module {name or type(module).__name__!r} makes sparse gradients, which the probe does not record; "
                "construct it with sparse=False"
            )
    gates = find_gates(model)
    gate_params = {id(p) for g in gates.values() for p in g.parameters()}
    prompt_params = {id(p) for p in prompts.values()}
    groups = _group_specs(optimizer, gate_params, prompt_params)
    group_of = {id(p): spec.name for spec, g in zip(groups, optimizer.param_groups, strict=True) for p in g["params"]}

    reached = _terms_per_gate(gates, regularisers)
    gate_probes = []
    for qualified, gate in gates.items():
        prompt = prompts.get(gate.prompt) if gate.prompt else None
        if prompt is not None and prompt.shape[0] != gate.n_gates:
            prompt = None
        first = next(gate.parameters(), None)
        spec = rf.GateSetSpec(
            name=gate_set_name(qualified),
            n_gates=gate.n_gates,
            kind=gate.kind,
            prompt=gate.prompt if prompt is not None else "",
            decomposition=prompt is not None,
            group=group_of.get(id(first), "") if first is not None else "",
            init_logit=tuple(gate.logits.detach().double().cpu().tolist()) if gate.logits is not None else (),
            factors=gate.vector_dim > 0,
            vector_dim=gate.vector_dim,
            terms=reached.get(qualified, ()),
            equilibrium=bool(gate.equilibrium),
            init_bias=() if gate.proj is None else tuple(gate.proj.bias.detach().double().cpu().tolist()),
            init_weight_norm=()
            if gate.proj is None
            else tuple(torch.linalg.vector_norm(gate.proj.weight.detach().double(), dim=1).cpu().tolist()),
        )
        gate_probes.append(_GateProbe(spec, gate, qualified))
    layout = rf.Layout(
        loss_terms=tuple(loss_terms),
        groups=tuple(groups),
        gate_sets=tuple(g.spec for g in gate_probes),
        prompts=tuple(rf.PromptSpec(name, int(p.shape[0]), group_of.get(id(p), "")) for name, p in prompts.items()),
        tensors=tuple(rf.TensorSpec(name, tuple(p.shape), stride) for name, (p, stride) in tensors.items()),
    )
    group_probes = [
        _GroupProbe(spec.name, list(g["params"])) for spec, g in zip(groups, optimizer.param_groups, strict=True)
    ]
    return Probe(layout, group_probes, gate_probes, dict(prompts), dict(tensors), block, regularisers)


def _terms_per_gate(gates: Mapping[str, Gate], regularisers: Regularisers | None) -> dict[str, tuple[str, ...]]:
    """Which loss terms of ``regularisers`` depend on which gate (qualified name → term names), found by one
    autograd pass at the gates' current values (instance gates: σ of the bias, as a batch of one)."""
    if regularisers is None or not gates:
        return {}
    with torch.enable_grad():
        logits = {name: g.logits if g.logits is not None else _projection(g).bias[None] for name, g in gates.items()}
        values = {name: torch.sigmoid(x).detach().double().requires_grad_() for name, x in logits.items()}
        reached: dict[str, list[str]] = {name: [] for name in gates}
        for term, value in regularisers(values).items():
            if not value.requires_grad:
                continue
            grads = torch.autograd.grad(value, list(values.values()), allow_unused=True, retain_graph=True)
            for name, grad in zip(values, grads, strict=True):
                if grad is not None:
                    reached[name].append(term)
    return {name: tuple(terms) for name, terms in reached.items() if terms}


class Probe:
    """Measures every step on the device and hands blocks of rows to a :class:`RecordingWriter`.

    ``layout`` declares what the rows hold; create the writer with it. Per step, :meth:`after_backward` copies the
    raw measurements into one row of a ``(block, width)`` float32 device buffer with at most two kernel dispatches
    (one ``torch._foreach_norm`` over the gradients of parameters larger than :data:`RAW_GRADIENT_LIMIT`, one
    ``torch._foreach_copy_`` of everything into the row's preallocated views): loss terms, those norms, the whole
    gradients of smaller parameters, static gate logits and their gradients, the per-input logits and ∂L/∂g of
    instance gates, and the values and gradients of the prompt tokens; for gate sets with ratio factors, ∂L/∂ũ and
    u whole while they hold at most :data:`RAW_GRADIENT_LIMIT` values, else per gate (and input) ‖∂L/∂ũ‖²,
    ⟨∂L/∂ũ, u⟩ and ‖u‖² — the only statistics taken on the device (``vecdot`` kernels; an instance gate's
    ⟨∂L/∂ũ, u⟩ = ∂L/∂σ is read from autograd) — and an instance gate's weight and bias. Otherwise no statistic is
    computed on the device (right after backward the caches are cold and every dispatch is expensive):
    :meth:`flush` copies the block to the host once and derives the recorded series from it in float64 (σ, σ',
    group norms, batch means and stds, per-token norms, cosines, the ratio factors, movement, and the regulariser
    parts of ∂L/∂g from ``regularisers``).

    Memory: ``block × width × 4`` bytes on the device, where ``width`` counts twice every prompt element, once every
    element of a small parameter, and twice ``batch × n_gates`` per instance gate set (the batch is the largest seen
    so far: a larger one flushes the buffered rows and reallocates); with factors, per set, twice its ∂L/∂ũ's size up
    to :data:`RAW_GRADIENT_LIMIT` or three per gate (and input) above it, and an instance gate's weight and bias.
    """

    def __init__(
        self,
        layout: rf.Layout,
        groups: list[_GroupProbe],
        gates: list[_GateProbe],
        prompts: dict[str, nn.Parameter],
        tensors: dict[str, tuple[nn.Parameter, int]],
        block: int,
        regularisers: Regularisers | None = None,
    ) -> None:
        self.layout = layout
        self._regularisers = regularisers
        self.block = block
        self._groups = groups
        self._params = [p for g in groups for p in g.params]
        self._gates = gates
        self._instance = [g.gate for g in gates if g.gate.logits is None]
        self._prompts = prompts
        self._device = self._params[0].device if self._params else torch.device("cpu")
        self._host: list[tuple[int, int, float, tuple[int, ...]]] = []  # step, epoch, lr, instance batch sizes
        self._strided: list[tuple[str, int, torch.Tensor]] = []
        self._writer: rf.RecordingWriter | None = None
        self._closed = False
        self._warned = False  # about gradient accumulation, once
        self._flush_seconds = float("inf")
        self._last_flush = time.monotonic()
        self._capture_before = [g.gate.capture for g in gates]  # restored by close()
        for g in gates:
            g.gate.capture = g.gate.logits is None or g.spec.factors
        self._gate_plan = [
            (g.gate.logits, g.gate, f"gate/{g.spec.name}/logit", f"gate/{g.spec.name}/grad") for g in gates
        ]
        self._gate_extra = [  # the factor pieces' prefix, and an instance gate's (bias, weight) when it moves
            (
                f"gate/{g.spec.name}" if g.spec.factors else "",
                (_projection(g.gate).bias, _projection(g.gate).weight) if g.moves else (),
            )
            for g in gates
        ]
        in_row = {id(param): key for param, _, _, key in self._gate_plan if param is not None}
        in_row.update({id(param): f"prompt/{name}/grad" for name, param in prompts.items()})
        # where each parameter's gradient norm comes from: a gradient already in the row, the gradient of a small
        # parameter copied whole (``grad/i``), or the norm of a large one (``norm/i``, one _foreach_norm)
        self._norm_keys = [
            in_row.get(id(p)) or (f"grad/{i}" if p.numel() <= RAW_GRADIENT_LIMIT else f"norm/{i}")
            for i, p in enumerate(self._params)
        ]
        self._normed = [
            (p, key) for p, key in zip(self._params, self._norm_keys, strict=True) if key.startswith("norm/")
        ]
        self._raw_plan = [
            (p, key) for p, key in zip(self._params, self._norm_keys, strict=True) if key.startswith("grad/")
        ]
        self._prompt_plan = [(param, f"prompt/{name}/grad") for name, param in prompts.items()]
        # per-input instance measurements stay float32 on the host (_batch_statistics sums them in float64)
        self._per_input_keys = {
            key for param, _, logit_key, grad_key in self._gate_plan if param is None for key in (logit_key, grad_key)
        } | {
            f"gate/{g.spec.name}/{k}"
            for g in gates
            if g.gate.logits is None and g.spec.factors
            for k in (*PRODUCTS, "G", "u")
        }
        self._initial_weight = {
            g.spec.name: _projection(g.gate).weight.detach().double().cpu().numpy().copy() for g in gates if g.moves
        }
        self._strided_plan = [(name, param, stride) for name, (param, stride) in tensors.items()]
        self._allocate([0] * len(self._instance))

    def _allocate(self, capacity: list[int]) -> None:
        """(Re)build the device buffer and each row's destination views for instance batches of ``capacity``.

        A row is the concatenation of the pieces below, each a view of the row with the shape of its source;
        ``self._slots`` maps each piece's key to its columns, :meth:`_row` lists row ``i``'s views in order.
        """
        shapes: dict[str, tuple[int, ...]] = {f"loss/{term}": () for term in self.layout.loss_terms}
        shapes.update({key: () for key in self._norm_keys if key.startswith("norm/")})
        shapes.update({key: tuple(p.shape) for p, key in self._raw_plan})
        rows = iter(capacity)
        for g in self._gates:
            n = g.gate.n_gates
            pair = ("logit", "grad")
            shape: tuple[int, ...] = (n,) if g.gate.logits is not None else (next(rows), n)
            shapes.update({f"gate/{g.spec.name}/{k}": shape for k in pair})
            whole = (*shape, g.spec.vector_dim)
            if g.spec.factors and math.prod(whole) > RAW_GRADIENT_LIMIT:  # per input, reduced on the device
                shapes.update({f"gate/{g.spec.name}/{k}": shape for k in PRODUCTS})
            elif g.spec.factors:  # ∂L/∂ũ and u whole (``(batch ×) n × vector_dim`` each), reduced on the host
                shapes[f"gate/{g.spec.name}/G"] = shapes[f"gate/{g.spec.name}/u"] = whole
            if g.moves:
                shapes[f"gate/{g.spec.name}/bias"] = (n,)
                shapes[f"gate/{g.spec.name}/weight"] = tuple(_projection(g.gate).weight.shape)
        for name, prompt in self._prompts.items():
            shapes[f"prompt/{name}/value"] = shapes[f"prompt/{name}/grad"] = tuple(prompt.shape)
        self._capacity = capacity
        self._slots: dict[str, slice] = {}
        start = 0
        for key, shape in shapes.items():
            width = math.prod(shape)
            self._slots[key] = slice(start, start + width)
            start += width
        self._buffer = torch.full((self.block, start), float("nan"), dtype=torch.float32, device=self._device)
        # every row's destination views, built here in one unbind per piece (built per row on first use they cost
        # ~15 view dispatches a step for the whole first block)
        columns = self._buffer.split([math.prod(shape) for shape in shapes.values()], dim=1)
        pieces = [c.view(self.block, *shape).unbind(0) for c, shape in zip(columns, shapes.values(), strict=True)]
        self._rows = [list(views) for views in zip(*pieces, strict=True)] if pieces else [[]] * self.block
        nan = torch.full(
            (max((math.prod(s) for s in shapes.values()), default=1),),
            float("nan"),
            dtype=torch.float32,
            device=self._device,
        )
        self._nan = {key: nan[: math.prod(shape)].view(shape) for key, shape in shapes.items()}
        # per gate set with factors: whether G and u go whole into the row, and the NaN views of its pieces
        self._factor_pieces: dict[str, tuple[bool, list[torch.Tensor]]] = {}
        for g in self._gates:
            prefix = f"gate/{g.spec.name}"
            if g.spec.factors:
                copied = f"{prefix}/G" in shapes
                keys = ("G", "u") if copied else PRODUCTS
                self._factor_pieces[prefix] = (copied, [self._nan[f"{prefix}/{k}"] for k in keys])

    def attach(self, writer: rf.RecordingWriter) -> None:
        """Send blocks to ``writer``; its layout must declare every series of :attr:`layout`.

        Blocks go out when ``block`` rows are buffered or ``writer.flush_seconds`` have passed since the last one,
        so slow steps still reach the file (and a live viewer) in time, and when the writer closes (also on an
        exception, so the steps before a failure are in the file).
        """
        missing = set(self.layout.step_series()) - set(writer.layout.step_series())
        if missing:
            raise ValueError(f"the writer's layout lacks {sorted(missing)}; create it with probe.layout")
        self._writer = writer
        self._flush_seconds = writer.flush_seconds

        def hand_over() -> None:  # the buffered rows reach the file even when an exception ends the with block
            if self._writer is writer:
                self.flush()

        writer.before_close(hand_over)

    # ------------------------------------------------------------------ per step, on the device
    def _sources(self, losses: Mapping[str, torch.Tensor | float], batch: list[int]) -> list[torch.Tensor]:
        """This step's source tensors, in the order of a row's views (missing ones are the NaN views).

        ``batch`` receives each instance gate set's captured rows (0 when it was not called this step). This runs
        every step right after backward, when caches are cold: it only reads attributes and dispatches one op.
        """
        nan = self._nan
        sources: list[torch.Tensor] = []
        for term in self.layout.loss_terms:
            t = losses.get(term)
            if t is None:
                t = nan[f"loss/{term}"]
            elif not isinstance(t, torch.Tensor) or t.dim():
                t = torch.as_tensor(t, dtype=torch.float32, device=self._device).reshape(())
            sources.append(t)
        if self._normed:
            grads = [p.grad for p, _ in self._normed]
            present = [g for g in grads if g is not None]
            norms = list(torch._foreach_norm(present)) if present else []
            if len(present) < len(grads):  # parameters without a gradient this step are marked NaN
                found = iter(norms)
                norms = [
                    nan[key] if g is None else next(found) for g, (_, key) in zip(grads, self._normed, strict=True)
                ]
            sources += norms
        for param, key in self._raw_plan:
            sources.append(nan[key] if param.grad is None else param.grad)
        for (gate_param, gate, logit_key, grad_key), (factors, moved) in zip(
            self._gate_plan, self._gate_extra, strict=True
        ):
            # a gate without a captured forward since the last step still holds that step's tensors: NaN, not those
            fresh = gate.forwards > 0
            parts = gate.parts if fresh else []
            if parts and gate.gated_dim != gate.vector_dim:
                _wrong_vector_dim(factors, gate)
            if gate_param is not None:  # static gates
                sources += (gate_param, nan[grad_key] if gate_param.grad is None else gate_param.grad)
                if factors:
                    copied, pieces = self._factor_pieces[factors]
                    if copied:
                        sources += _gated_vectors(gate, parts, pieces[0], pieces[1])
                    else:
                        sources += _products(parts, (gate.n_gates,)) or pieces
                continue
            captured = gate.last_logits if fresh else None
            if captured is None:
                batch.append(0)
                sources += (nan[logit_key], nan[grad_key])
                if factors:
                    sources += self._factor_pieces[factors][1]
            else:
                grad = captured.grad
                if captured.dim() != 2:  # (..., n_gates): one row per input
                    captured = captured.reshape(-1, gate.n_gates)
                    grad = None if grad is None else grad.reshape(-1, gate.n_gates)
                rows = captured.shape[0]
                batch.append(rows)
                sources += (captured, nan[grad_key][:rows] if grad is None else grad)
                if factors:
                    copied, pieces = self._factor_pieces[factors]
                    if copied:
                        sources += _gated_vectors(gate, parts, pieces[0][:rows], pieces[1][:rows], rows)
                    else:
                        sources += _products(parts, (rows, gate.n_gates)) or [piece[:rows] for piece in pieces]
            sources += moved
        for param, grad_key in self._prompt_plan:
            grad = param.grad
            sources += (param, nan[grad_key] if grad is None else grad)
        return sources

    def after_backward(self, step: int, epoch: int, lr: float, losses: Mapping[str, torch.Tensor]) -> None:
        """Copy this step's losses, gradients, gates and prompts into the device buffer (no host sync).

        ``losses`` maps loss term → scalar tensor (terms missing from it are NaN). ``step``, ``epoch`` and ``lr``
        are Python numbers. A full buffer is flushed (the only point where data moves to the host).
        """
        if self._writer is None or self._closed:
            raise RuntimeError(
                "this probe is closed; watch() the model again to record more"
                if self._closed
                else "attach a RecordingWriter before recording (probe.attach(writer))"
            )
        batch: list[int] = []
        with torch.no_grad():
            sources = self._sources(losses, batch)
            if batch == self._capacity:
                targets = self._rows[len(self._host)]
            else:
                sources, targets = self._fit(batch, sources, losses)
            torch._foreach_copy_(targets, sources)
        for g in self._gates:  # the captures are read
            if g.gate.forwards > 1 and not self._warned:
                self._warned = True
                warnings.warn(
                    f"gate set {g.spec.name!r} ran {g.gate.forwards} forward passes before this after_backward "
                    "(gradient accumulation?): its per-input series and ratio factors describe the last one only; "
                    "call after_backward after each backward to record every micro-batch",
                    stacklevel=2,
                )
            g.gate.forwards = 0
        step = int(step)
        self._host.append((step, int(epoch), float(lr), tuple(batch)))
        for name, param, stride in self._strided_plan:
            if step % stride == 0 and param.grad is not None:
                self._strided.append((name, step, param.grad.detach().clone()))
        if len(self._host) == self.block or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def _fit(
        self, batch: list[int], sources: list[torch.Tensor], losses: Mapping[str, torch.Tensor | float]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Sources and targets for a step whose instance batches differ from the buffer's capacity: a larger batch
        flushes the buffered rows and reallocates; a smaller one (the last of an epoch) fills the first rows of its
        slot."""
        if any(b > c for b, c in zip(batch, self._capacity, strict=True)):
            if self._host:
                self.flush()
            self._allocate([max(b, c) for b, c in zip(batch, self._capacity, strict=True)])
            sources = self._sources(losses, [])  # the NaN views of the new buffer
        targets = [
            t if t.shape == s.shape else t[: s.shape[0]]
            for t, s in zip(self._rows[len(self._host)], sources, strict=True)
        ]
        return sources, targets

    # ------------------------------------------------------------------ per block, on the host
    def _derive(self, raw: np.ndarray, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The recorded per-step series of ``n`` rows from the raw block ``(n, width)`` (computed in float64, but for
        the per-input σ of instance gates: see :func:`_batch_statistics`).

        ``batch`` ``(n, n_instance_sets)``: the captured rows of each instance gate set at each step.
        """
        n = len(raw)
        col = {  # wide pieces stay float32 views; every reduction over them accumulates in float64
            key: raw[:, s] if key in self._per_input_keys or s.stop - s.start > 64 else raw[:, s].astype(np.float64)
            for key, s in self._slots.items()
        }
        out = {rf.loss_path(term): col[f"loss/{term}"][:, 0] for term in self.layout.loss_terms}
        squares = (
            np.stack(
                [
                    col[key][:, 0].astype(np.float64) ** 2 if key.startswith("norm/") else _squares(col[key])
                    for key in self._norm_keys
                ],
                axis=1,
            )
            if self._params
            else np.empty((n, 0))
        )
        start = 0
        for group in self._groups:
            block = squares[:, start : start + len(group.params)]
            start += len(group.params)
            out[rf.grad_norm_path(group.name)] = np.where(np.isnan(block).all(1), np.nan, np.sqrt(np.nansum(block, 1)))
        tokens = {
            name: (
                col[f"prompt/{name}/value"].reshape(n, p.shape[0], -1),
                col[f"prompt/{name}/grad"].reshape(n, p.shape[0], -1),
            )
            for name, p in self._prompts.items()
        }
        batches = iter(batch.T)  # one column per instance gate set, in gate order
        terms = self._term_gradients(col, batch)
        for g in self._gates:
            name, n_gates = g.spec.name, g.gate.n_gates
            logit, grad = col[f"gate/{name}/logit"], col[f"gate/{name}/grad"]
            if g.gate.logits is not None:  # static gates: logit and grad were measured, σ and σ' follow
                rows = np.ones(n, np.int64)
                series = {
                    "logit": logit,
                    "value": expit(logit),
                    "dsigmoid": rf.dsigmoid_from_logit(logit),
                    "grad": grad,
                }
                logistic = None
            else:
                rows = next(batches)
                series, logistic = _batch_statistics(logit.reshape(n, -1, n_gates), grad.reshape(n, -1, n_gates), rows)
            if g.spec.factors:
                if self._factor_pieces[f"gate/{name}"][0]:  # G and u whole: reduced here, (steps, batch or 1, n_gates)
                    G, u = (col[f"gate/{name}/{k}"].reshape(n, -1, n_gates, g.spec.vector_dim) for k in "Gu")
                    gg, dot, uu = _squares(G), _dot(G, u), _squares(u)
                else:  # reduced on the device
                    gg, dot, uu = (col[f"gate/{name}/{k}"].reshape(n, -1, n_gates) for k in PRODUCTS)
                if logistic is None:  # per-input logs in float32, as for instance gates
                    logistic = _Logistic.of(logit.reshape(n, 1, n_gates).astype(np.float32))
                series.update(_factors(logistic, gg, dot, uu, rows))
            if g.moves:
                params = col[f"gate/{name}/bias"], col[f"gate/{name}/weight"]
                series.update(_movement(*params, self._initial_weight[name]))
            series.update({rf.term_series(t): v for t, v in terms.get(name, {}).items()})
            if g.spec.decomposition:
                value, prompt_grad = tokens[g.spec.prompt]
                series["prompt_norm"] = np.sqrt(_squares(value))
                series["cosine"] = _cosine(prompt_grad, value)
            out.update({rf.gate_path(g.spec.name, k): v for k, v in series.items()})
        for name, (value, grad) in tokens.items():
            out[rf.prompt_path(name, "grad_norm")] = np.sqrt(_squares(grad))
            out[rf.prompt_path(name, "norm")] = np.sqrt(_squares(value))
        return out

    def _term_gradients(self, col: dict[str, np.ndarray], batch: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """∂term/∂g per gate set and regulariser term, ``(n, n_gates)`` (instance gates: summed over the batch), from
        the gate values of the block's ``n`` rows: one ``vmap(jacrev(regularisers))`` per distinct set of instance
        batch sizes. Steps where an instance gate saw no input are NaN."""
        wanted = [g for g in self._gates if g.spec.terms]
        if self._regularisers is None or not wanted:
            return {}
        n = len(batch)
        logits = {}
        for g in self._gates:
            logit = col[f"gate/{g.spec.name}/logit"].astype(np.float64)
            logits[g.qualified] = logit if g.gate.logits is not None else logit.reshape(n, -1, g.gate.n_gates)
        out = {g.spec.name: {t: np.full((n, g.gate.n_gates), np.nan) for t in g.spec.terms} for g in wanted}
        keys = [tuple(int(b) for b in row) for row in batch]
        jacobian = torch.func.vmap(torch.func.jacrev(self._regularisers))
        for key in dict.fromkeys(keys):
            if 0 in key:
                continue
            idx = np.flatnonzero([k == key for k in keys])
            rows = iter(key)
            chosen = {q: v[idx] if v.ndim == 2 else v[idx, : next(rows)] for q, v in logits.items()}
            jac = jacobian({q: torch.from_numpy(expit(v)) for q, v in chosen.items()})
            for g in wanted:
                dsig = rf.dsigmoid_from_logit(chosen[g.qualified])
                for term in g.spec.terms:
                    d = jac[term][g.qualified].numpy() * dsig
                    out[g.spec.name][term][idx] = d if d.ndim == 2 else d.sum(axis=1)
        return out

    def flush(self) -> None:
        """Move the buffered rows (one device → host copy) and strided tensors to the writer."""
        if self._writer is None:
            raise RuntimeError("attach a RecordingWriter before recording (probe.attach(writer))")
        n = len(self._host)
        try:
            if n:
                steps, epochs, lrs, batch = zip(*self._host, strict=True)
                block = self._derive(self._buffer[:n].cpu().numpy(), np.asarray(batch, np.int64).reshape(n, -1))
                block.update(
                    {rf.STEP: np.asarray(steps, np.int64), rf.EPOCH: np.asarray(epochs), rf.LR: np.asarray(lrs)}
                )
                self._writer.append_block(block)
            for name, step, grad in self._strided:
                self._writer.add_tensor(name, step, grad.cpu().numpy())
        finally:  # written or not (a full disk, a closed writer: the error says so), the buffer starts over
            self._host.clear()
            self._strided.clear()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush the remaining rows and the writer's file, and give the gates back as :func:`watch` found them
        (their ``capture`` flag restored, no captured graph tensor kept alive). A closed probe records no more
        steps."""
        try:
            if self._host or self._strided:
                self.flush()
            if self._writer is not None and not self._writer.closed:
                self._writer.flush()
        finally:
            for g, capture in zip(self._gates, self._capture_before, strict=True):
                g.gate.capture = capture
                g.gate.release()
            self._closed = True


def _projection(gate: Gate) -> nn.Linear:
    """An instance gate's input projection (the logits' weights and bias); static gates have none."""
    if gate.proj is None:
        raise ValueError("a static gate has no input projection")
    return gate.proj


@dataclass(frozen=True)
class _Logistic:
    """σ(g), σ'(g) and log(1 − σ(g)) elementwise, in the logit's dtype: σ' by
    :func:`~recorders.format.dsigmoid_from_logit` (as every reader computes it) and log(1 − σ) = −softplus(g) =
    −(max(g, 0) + log1p(e^{−|g|})), both accurate where σ rounds to 0 or 1."""

    value: np.ndarray
    dsigmoid: np.ndarray
    log_one_minus: np.ndarray

    @classmethod
    def of(cls, logit: np.ndarray) -> _Logistic:
        with np.errstate(over="ignore"):  # σ = 1/(1 + e^{−g}) → 0 below g ≈ −88 in float32, as expit's; 5× faster
            value = 1.0 / (1.0 + np.exp(-logit))
        softplus = np.maximum(logit, 0) + np.log1p(np.exp(-np.abs(logit)))
        return cls(value, rf.dsigmoid_from_logit(logit), -softplus)


def _batch_statistics(logit: np.ndarray, grad: np.ndarray, rows: np.ndarray) -> tuple[dict[str, np.ndarray], _Logistic]:
    """Per-step series of an instance gate set from per-input float32 logits and ∂L/∂g ``(steps, capacity,
    n_gates)`` of which the first ``rows[s]`` inputs are valid at step ``s``: batch means of logit, σ and σ', the
    batch sum of ∂L/∂g (what the gate's bias receives), and the population std of σ; and the per-input
    :class:`_Logistic` they came from (the factors reuse it). σ and σ' are evaluated per input in float32 (where
    they were measured), every sum in float64. A step with no inputs is NaN.
    """
    valid = np.arange(logit.shape[1])[None, :] < rows[:, None]  # (steps, capacity)
    if not valid.all():  # the rest of a short batch's slot holds stale numbers
        logit, grad = np.where(valid[..., None], logit, 0.0), np.where(valid[..., None], grad, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = (valid / rows[:, None])[:, None, :]  # (steps, 1, capacity); NaN at steps with no inputs

    def mean(x: np.ndarray) -> np.ndarray:
        return np.matmul(weight, x, dtype=np.float64)[:, 0]

    logistic = _Logistic.of(logit)
    value_mean = mean(logistic.value)
    # the variance about the mean rounded to float32, less the exact square of that rounding (the shifted-data
    # formula, no cancellation): float32 deviations of whole rows cost ~1/15 of a float64 broadcast
    shift = value_mean.astype(np.float32)
    deviation = logistic.value.reshape(len(logit), -1) - np.tile(shift, (1, logit.shape[1]))
    variance = mean(np.square(deviation).reshape(logit.shape)) - np.square(value_mean - shift)
    total = np.matmul(valid[:, None, :].astype(np.float64), grad, dtype=np.float64)[:, 0]
    series = {
        "logit": mean(logit),
        "value": value_mean,
        "dsigmoid": mean(logistic.dsigmoid),
        "grad": np.where(rows[:, None] > 0, total, np.nan),
        "value_mean": value_mean,
        "value_std": np.sqrt(np.maximum(variance, 0.0)),
    }
    return series, logistic


def _factors(
    logistic: _Logistic, gg: np.ndarray, dot: np.ndarray, uu: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The exact ratio factors from the per-input :class:`_Logistic` of the logits and ‖G‖², ⟨G, u⟩, ‖u‖² of
    G = ∂L/∂ũ and the gated vector u, each ``(steps, capacity, n_gates)``, of which the first ``rows[s]`` inputs are
    valid (static gates: capacity 1).

    Per input, |σ'(g)·⟨G, u⟩| / ‖σ(g)·G‖ = (1 − σ)·‖u‖·|cos(G, u)|; each factor is the geometric mean over the
    valid inputs whose G is nonzero (so their product is the geometric mean of the per-input ratio; an input the
    loss ignores carries no gradient and its ratio 0/0 is undefined), ``grad_task`` = Σ σ'·⟨G, u⟩ over the valid
    inputs. Per-input logs are taken in float32 (where instance numbers were measured), sums in float64.
    """
    gg, dot, uu = (np.asarray(a, np.float32) for a in (gg, dot, uu))
    ones = np.ones((len(gg), 1, gg.shape[1]))  # a sum over inputs as a matmul: ~5× numpy's sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_uu = np.log(uu)
        logs = {
            "factor_sigma": logistic.log_one_minus,
            "factor_norm": 0.5 * log_uu,
            "factor_cos": np.log(np.abs(dot)) - 0.5 * (np.log(gg) + log_uu),
        }
        task = logistic.dsigmoid * dot
        mask = gg > 0  # False where G = 0 or not measured (NaN)
        if rows.min() < gg.shape[1]:  # short batches: the rest of the slot holds stale numbers
            inputs = np.arange(gg.shape[1])[None, :, None] < rows[:, None, None]  # (steps, capacity, 1)
            task = np.where(inputs, task, np.float32(0.0))
            mask &= inputs
        count: np.ndarray = rows[:, None]
        if not mask.all():
            logs = {k: np.where(mask, v, np.float32(0.0)) for k, v in logs.items()}
            count = mask.sum(1)
        out = {k: np.exp(np.matmul(ones, v, dtype=np.float64)[:, 0] / count) for k, v in logs.items()}
        total = np.matmul(ones, task, dtype=np.float64)[:, 0]
    out["grad_task"] = np.where(rows[:, None] > 0, total, np.nan)
    return out


def _wrong_vector_dim(prefix: str, gate: Gate) -> None:
    """Raise a one-line ValueError: this step's :meth:`Gate.gated` calls scaled vectors of another length per gate
    than the gate's declared ``vector_dim`` (the factors and the analyses' random-cosine reference use it)."""
    raise ValueError(
        f"gate set {prefix.removeprefix('gate/')!r} declares vector_dim {gate.vector_dim} but gated() scaled "
        f"{gate.gated_dim} values per gate this step; declare vector_dim={gate.gated_dim} (the length of everything "
        "the gate scales)"
    )


def _gated_vectors(
    gate: Gate, parts: list[GatedPart], nan_grad: torch.Tensor, nan_vector: torch.Tensor, rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂L/∂ũ and u of a gate's ``parts`` (this step's :meth:`Gate.gated` calls): ``(n_gates, vector_dim)`` each for
    a static gate, ``(rows, n_gates, vector_dim)`` for an instance gate (the parts side by side: one ``cat`` each
    when there are several), or the NaN views when not captured."""
    grads = [part.out.grad for part in parts if part.out.grad is not None]
    if not parts or len(grads) < len(parts):
        return nan_grad, nan_vector
    lead = (gate.n_gates,) if rows is None else (rows, gate.n_gates)
    if len(parts) == 1:
        return grads[0].reshape(*lead, -1), parts[0].vector.reshape(*lead, -1)
    grad = torch.cat([g.reshape(*lead, -1) for g in grads], -1)
    vector = torch.cat([part.vector.reshape(*lead, -1) for part in parts], -1)
    return grad, vector


def _products(parts: list[GatedPart], lead: tuple[int, ...]) -> list[torch.Tensor] | None:
    """Per gate (and input), ‖G‖², ⟨G, u⟩ and ‖u‖² of G = ∂L/∂ũ and u of a gate's ``parts`` (:data:`PRODUCTS`
    order), each of shape ``lead`` (``(n_gates,)`` for a static gate, ``(rows, n_gates)`` for an instance gate) in
    u's precision (at least float32): two or three reductions over the vector on the device per :meth:`Gate.gated`
    call (no stacked copy; an expanded u stays a view). An instance gate's ⟨G, u⟩ is ∂L/∂σ of the call, which
    autograd computed (the gradient of :attr:`GatedPart.scale`). None if not captured.

    Every dispatch counts right after backward (a few µs each on a CPU), so views and casts are only taken where
    the shapes and dtypes differ."""
    total: list[torch.Tensor] | None = None
    for out, vector, scale in parts:
        grad = out.grad
        if grad is None:
            return None
        dtype = torch.promote_types(vector.dtype, torch.float32)  # half precision is widened, float64 kept
        u, g = _as(vector, lead, dtype, flat=True), _as(grad, lead, dtype, flat=True)
        dot = scale.grad if scale is not None else None
        part = [
            torch.linalg.vecdot(g, g),
            torch.linalg.vecdot(g, u) if dot is None else _as(dot, lead, dtype),
            torch.linalg.vecdot(u, u),
        ]
        total = part if total is None else [a + b for a, b in zip(total, part, strict=True)]
    return total


def _as(x: torch.Tensor, lead: tuple[int, ...], dtype: torch.dtype, flat: bool = False) -> torch.Tensor:
    """``x`` of shape ``lead`` (``flat``: ``(*lead, -1)``, the vector after the lead axes flattened) in ``dtype``,
    dispatching only what differs."""
    if x.dim() != len(lead) + flat or x.shape[: len(lead)] != lead:
        x = x.reshape((*lead, -1) if flat else lead)
    return x if x.dtype == dtype else x.to(dtype)


def _movement(bias: np.ndarray, weight: np.ndarray, initial: np.ndarray) -> dict[str, np.ndarray]:
    """An instance gate's parameters at each step: ``bias`` ``(steps, n_gates)``, and of the weight rows ``(steps,
    n_gates·E)`` against ``initial`` ``(n_gates, E)``: ‖W_i − W_i(0)‖ and ⟨W_i − W_i(0), W_i(0)⟩ / ‖W_i(0)‖."""
    diff = weight.astype(np.float64).reshape(len(weight), *initial.shape) - initial
    norm0 = np.linalg.norm(initial, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        along = np.einsum("sne,ne->sn", diff, initial) / norm0
    return {"bias": bias.astype(np.float64), "weight_shift": np.linalg.norm(diff, axis=2), "weight_along_init": along}


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a·b along the last axis, accumulated in float64 (no float64 copy of float32 inputs)."""
    return np.einsum("...d,...d->...", a, b, dtype=np.float64)


def _squares(x: np.ndarray) -> np.ndarray:
    """Σ x² along the last axis, accumulated in float64 (~6× ``np.linalg.norm`` of a float64 copy)."""
    return _dot(x, x)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) along the last axis; 0 where either vector is zero."""
    dot = _dot(a, b)
    norms = np.sqrt(_squares(a) * _squares(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dot / norms
    cos[norms == 0] = 0.0  # NaN inputs (a missing gradient) stay NaN
    return cos
