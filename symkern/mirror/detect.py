"""Find mirror symmetries of a torch model, in the coordinates of
``torch.nn.utils.parameters_to_vector(model.parameters())``, and verify each numerically.

What is detected (only inside ``nn.Sequential`` containers, pattern ``Linear → [elementwise
activations] → Linear``, hidden width h = first.out_features = second.in_features):

* **permutation** (:func:`permutation_mirrors`): for any elementwise activation, swapping hidden
  neurons i ↔ j (row i of W₁, b₁[i], column i of W₂) is a mirror → :meth:`Mirror.neuron_swap`,
  one per pair i < j. Constraint: neuron i = neuron j.
* **sign flip** (:func:`sign_flip_mirrors`): for an *odd* activation (Tanh, Hardtanh with
  min = −max, Softsign, Tanhshrink, Identity, or none) (W₁[i], b₁[i], W₂[:, i]) → −(…) is a
  mirror → :meth:`Mirror.coordinates` on that neuron's coordinates. Constraint: neuron i is dead
  (sparsity). This is the λ = −1 member of the rescaling family (u, w) → (λu, w/λ).
  ReLU (any non-odd activation) has no sign-flip mirror: see the next item.
* **positive rescaling** (:func:`rescaling_symmetries`): for a positively homogeneous activation
  (ReLU, LeakyReLU, Identity, none: φ(λz) = λφ(z) for λ > 0) the loss is invariant under
  (W₁[i], b₁[i]) → λ(W₁[i], b₁[i]), W₂[:, i] → W₂[:, i]/λ for every λ > 0 → a
  :class:`Rescaling` per neuron. This is a continuous symmetry, not a reflection, so it is not a
  :class:`Mirror` (no R_O with ℓ(θ) = ℓ(R_O θ) for ReLU: λ = −1 is not allowed). What it does
  give: the conserved "balance" ‖in_i‖² − ‖out_i‖² of gradient flow (:meth:`Rescaling.balance`,
  shrunk by weight decay), and the dead-neuron set in_i = out_i = 0, which (S)GD cannot leave
  (every gradient component of the neuron vanishes there). SPEC_MIRROR's rescaling *mirror* is
  for u ⊙ w parametrisations (build it with :meth:`Mirror.rescaling_pairs`).
* **rotation** (:func:`rotation_mirrors`): with no activation in between (or only Identity), the
  product W₂W₁ is invariant under W₁ → R W₁, b₁ → R b₁, W₂ → W₂ R for R = I − 2nnᵀ, any unit n ∈
  R^h → :meth:`Mirror.householder`. For other layouts (e.g. attention scores x W_Q W_Kᵀ xᵀ, where
  the hidden index is the output index of both W_Q and W_K) use :func:`hidden_index_mirror`.

A layer pair whose weights are tied (a parameter of W₁, b₁ or W₂ that another layer of the model
also holds, e.g. ``net[2].weight = net[0].weight``) is skipped by all the detectors above, with a
UserWarning naming it: a neuron's coordinates then overlap (or move another layer too), so none
of these maps is a coordinate symmetry of the loss.

A pair whose layer is parametrised (``torch.nn.utils.parametrize``: weight_norm, orthogonal,
spectral_norm; the old hook-based weight_norm / spectral_norm) is skipped the same way: its
weight is computed from other parameters, so it has no coordinates of its own in θ. When the
model has Linear layers but no pair is found (detection searches ``nn.Sequential`` containers
only; a Dropout or normalisation layer between the Linears ends a pair), a UserWarning says so.

Without ``loss`` the claims are **structural**: they hold when each detected Sequential is used
as a whole — its hidden layer read by nothing else (no skip connection from it, no slice such as
``net[:-1]`` feeding another head) and its weights used nowhere else (e.g. a decoder applying
``F.linear(h, enc.weight.t())``). Such uses are invisible to module inspection; every returned
object then has ``meta["verified"] = False``. With ``loss`` given, each one is verified by
:meth:`Mirror.is_symmetric` on random θ (float64; ``meta["verified"] = True``, the measured gap
in ``meta["gap"]``); those that fail are dropped (``on_fail="drop"``) or raise
(``on_fail="raise"``). The loss must be deterministic: it is first evaluated twice at one θ, and
a ValueError says so when the two values differ (e.g. Dropout in train mode: call
``model.eval()``). Random θ and normals come from ``generator`` (default: torch's global one,
which they then advance, like any torch sampler).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from symkern._checks import as_int, as_real, torch_generator
from symkern.mirror.core import Mirror, _check_tol, _check_trials, _loss_value, _relative_gap

__all__ = [
    "Rescaling",
    "find_mirrors",
    "flat_loss",
    "hidden_index_mirror",
    "linear_pairs",
    "param_layout",
    "permutation_mirrors",
    "rescaling_symmetries",
    "rotation_mirrors",
    "sign_flip_mirrors",
]

_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.Identity,
    nn.Hardtanh,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Mish,
    nn.SELU,
    nn.CELU,
)


def _is_odd(act: nn.Module) -> bool:
    if isinstance(act, nn.Hardtanh):  # also ReLU6 (min 0): not odd
        return act.min_val == -act.max_val
    return isinstance(act, (nn.Tanh, nn.Identity, nn.Softsign, nn.Tanhshrink))


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def param_layout(model: nn.Module) -> dict[int, tuple[int, tuple[int, ...]]]:
    """id(parameter) → (offset, shape) in parameters_to_vector(model.parameters())."""
    _check_model(model)
    out, off = {}, 0
    for p in model.parameters():
        out[id(p)] = (off, tuple(p.shape))
        off += p.numel()
    return out


def _dim(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat_loss(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """θ (d,) ↦ loss_fn(model_θ(inputs), targets), with θ in parameters_to_vector order.

    Differentiable in θ (``torch.func.functional_call``); floating inputs/targets are cast to
    θ's dtype. Raises ValueError naming ``theta`` for a θ of the wrong size.

    The loss is the model's as it is in its current train / eval mode (BatchNorm in train mode
    normalises with the batch statistics, in eval mode with its running ones; the mode is read
    at each call), evaluated without side effects: each call runs on copies of θ's parts and of
    the model's buffers (floating ones cast to θ's dtype, integer ones such as
    ``num_batches_tracked`` as they are), so neither θ nor the running statistics of the model
    are ever updated.
    """
    _check_model(model)
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable: (output, target) -> scalar")
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    names, shapes, numels = [], [], []
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        names.append(name)
        shapes.append(p.shape)
        numels.append(p.numel())
    d = sum(numels)
    buffers = dict(model.named_buffers())

    def f(theta: torch.Tensor) -> torch.Tensor:
        if not isinstance(theta, torch.Tensor) or theta.shape != (d,):
            shape = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(f"theta must have shape (d={d},) for this model, got {shape}")
        if not theta.is_floating_point():
            raise TypeError(f"theta must be a floating tensor, got dtype {theta.dtype}")
        parts = torch.split(theta, numels)
        # copies: a module may write its parameters in place (nn.Embedding's max_norm
        # renormalises rows), which must not change the caller's theta
        params = {n: t.reshape(s).clone() for n, t, s in zip(names, parts, shapes, strict=True)}
        for n, b in buffers.items():  # copies: a train-mode BatchNorm updates them in place
            dtype = theta.dtype if b.is_floating_point() else b.dtype
            params[n] = b.detach().to(dtype=dtype, copy=True)
        x = inputs.to(theta.dtype) if inputs.dtype.is_floating_point else inputs
        y = targets.to(theta.dtype) if targets.dtype.is_floating_point else targets
        out = torch.func.functional_call(model, params, (x,))
        return loss_fn(out, y)

    return f


def linear_pairs(model: nn.Module) -> list[tuple[str, nn.Linear, list[nn.Module], nn.Linear]]:
    """(name, first, activations, second) for each Linear → [elementwise]* → Linear inside any
    nn.Sequential of the model.

    The entries of a Sequential are read as its forward runs them: a module instance registered
    twice (``act = nn.ReLU(); nn.Sequential(lin1, act, lin2, act, lin3)``) counts at each place
    (``named_children`` lists it once, which hid the second ReLU and made lin2 → lin3 look
    linear)."""
    _check_model(model)
    out = []
    for sname, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = [(n, m) for n, m in seq._modules.items() if m is not None]
        for a, (na, m) in enumerate(kids):
            if not isinstance(m, nn.Linear):
                continue
            acts: list[nn.Module] = []
            for nb, m2 in kids[a + 1 :]:
                if isinstance(m2, nn.Linear):
                    if m2.in_features == m.out_features:
                        out.append((f"{sname}.{na}->{nb}".lstrip("."), m, acts, m2))
                    break
                if isinstance(m2, _ELEMENTWISE):
                    acts.append(m2)
                    continue
                break
    return out


def _tied(model: nn.Module, params: Sequence[torch.Tensor]) -> list[str]:
    """For each parameter among ``params`` that more than one module uses (tied weights, or a
    module used twice): its names in the model joined by " = "."""
    users: dict[int, list[str]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod.named_parameters(recurse=False):
            users.setdefault(id(p), []).append(f"{mname}.{pname}".lstrip("."))
    shared = {id(p): p for p in params if len(users.get(id(p), ())) > 1}  # each tensor once
    return [" = ".join(users[i]) for i in shared]


def _untied_pairs(model: nn.Module) -> list[tuple[str, nn.Linear, list[nn.Module], nn.Linear]]:
    """:func:`linear_pairs` less the pairs with tied weights (see the module docstring), each
    skipped one reported by a UserWarning."""
    out = []
    pairs = linear_pairs(model)
    if not pairs and sum(isinstance(m, nn.Linear) for m in model.modules()) >= 2:
        warnings.warn(
            "no Linear → [elementwise activation]* → Linear pair found: mirror detection "
            "searches nn.Sequential containers only, and a Dropout or normalisation layer "
            "between two Linears ends a pair",
            UserWarning,
            stacklevel=3,
        )
    layout = param_layout(model)
    for name, first, acts, second in pairs:
        params = [first.weight, second.weight] + ([first.bias] if first.bias is not None else [])
        if any(id(p) not in layout for p in params):  # computed: parametrize, old weight_norm
            warnings.warn(
                f"layer pair {name} skipped: a weight is computed from other parameters "
                "(a parametrisation such as weight_norm), so its neurons have no coordinates "
                "of their own in θ",
                UserWarning,
                stacklevel=3,
            )
            continue
        tied = _tied(model, params)
        if tied:
            warnings.warn(
                f"layer pair {name} skipped: its weights are tied ({'; '.join(tied)}), so its "
                "neuron maps are not coordinate symmetries",
                UserWarning,
                stacklevel=3,
            )
            continue
        out.append((name, first, acts, second))
    return out


def _neuron_blocks(layout, first: nn.Linear, second: nn.Linear) -> list[torch.Tensor]:
    """Flat coordinates of each hidden neuron: W₁[i, :], b₁[i], W₂[:, i] (same order for all i)."""
    h = first.out_features
    off1, _ = layout[id(first.weight)]
    W1 = off1 + torch.arange(first.weight.numel()).view(h, -1)
    parts = [W1]
    if first.bias is not None:
        offb, _ = layout[id(first.bias)]
        parts.append((offb + torch.arange(h))[:, None])
    off2, _ = layout[id(second.weight)]
    W2 = off2 + torch.arange(second.weight.numel()).view(-1, h)
    parts.append(W2.T)
    blocks = torch.cat(parts, 1)
    return [blocks[i] for i in range(h)]


def _check_deterministic(loss, d: int, generator, rtol: float) -> None:
    """A loss that differs between two calls at one θ would fail (or pass) every check by chance:
    refuse it (train-mode Dropout, a loss that samples)."""
    with torch.no_grad():
        p = torch.randn(d, generator=generator, dtype=torch.float64)
        a, b = _loss_value(loss(p)), _loss_value(loss(p))
    if not _relative_gap(a, b) <= rtol:
        raise ValueError(
            f"loss is not deterministic: two calls at the same theta gave {a!r} and {b!r}, so "
            "no symmetry can be verified on it (Dropout in train mode? call model.eval(), or "
            "fix the loss's randomness)"
        )


def _verify(mirrors, loss, on_fail, trials, generator, rtol):
    generator = torch_generator(generator)  # also when no loss is given, so never draws from it
    if loss is None:
        for m in mirrors:
            m.meta["verified"] = False
        return mirrors
    if on_fail not in ("drop", "raise"):
        raise ValueError(f"on_fail must be 'drop' or 'raise', got {on_fail!r}")
    if not callable(loss):
        raise TypeError("loss must be callable: theta (d,) -> scalar")
    trials = _check_trials(trials)
    rtol = _check_tol(rtol, "rtol")
    if mirrors:
        _check_deterministic(loss, mirrors[0].d, generator, rtol)
    kept = []
    for m in mirrors:
        ok, gap = m.is_symmetric(loss, trials=trials, generator=generator, rtol=rtol)
        m.meta["gap"] = gap
        m.meta["verified"] = ok
        if ok:
            kept.append(m)
        elif on_fail == "raise":
            raise ValueError(
                f"detected symmetry {m} ({m.meta}) is not a symmetry of loss: gap {gap:.3g}"
            )
    return kept


def permutation_mirrors(
    model: nn.Module,
    loss=None,
    *,
    on_fail: str = "drop",
    trials: int = 2,
    rtol: float = 1e-8,
    generator: torch.Generator | None = None,
    max_pairs: int | None = None,
) -> list[Mirror]:
    """Neuron-swap mirrors for every pair i < j of every detected hidden layer (any elementwise
    activation): h(h − 1)/2 per layer of width h (32 640 at h = 256; verifying each costs
    2 × ``trials`` loss evaluations). ``max_pairs`` (None: no cap, else an int >= 0) caps the
    number per layer (first pairs in lexicographic order)."""
    if max_pairs is not None:
        max_pairs = as_int(max_pairs, "max_pairs", minimum=0)
    layout, d = param_layout(model), _dim(model)
    out = []
    for name, first, _acts, second in _untied_pairs(model):
        blocks = _neuron_blocks(layout, first, second)
        count = 0
        for i in range(len(blocks)):
            for j in range(i + 1, len(blocks)):
                if max_pairs is not None and count >= max_pairs:
                    break
                m = Mirror.neuron_swap(blocks[i], blocks[j], d)
                m.meta.update(symmetry="permutation", layer=name, neurons=(i, j))
                out.append(m)
                count += 1
    return _verify(out, loss, on_fail, trials, generator, rtol)


def sign_flip_mirrors(
    model: nn.Module,
    loss=None,
    *,
    on_fail: str = "drop",
    trials: int = 2,
    rtol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> list[Mirror]:
    """Per-neuron sign-flip mirrors (rescaling with λ = −1) for hidden layers whose activations
    are all odd. ReLU layers yield none (see the module docstring)."""
    layout, d = param_layout(model), _dim(model)
    out = []
    for name, first, acts, second in _untied_pairs(model):
        if not all(_is_odd(a) for a in acts):
            continue
        for i, blk in enumerate(_neuron_blocks(layout, first, second)):
            m = Mirror.coordinates(blk, d, groups=torch.zeros(blk.numel(), dtype=torch.long))
            m.meta.update(symmetry="sign_flip", layer=name, neuron=i)
            out.append(m)
    return _verify(out, loss, on_fail, trials, generator, rtol)


def _positively_homogeneous(act: nn.Module) -> bool:
    return isinstance(act, (nn.ReLU, nn.LeakyReLU, nn.Identity))


@dataclass
class Rescaling:
    """Positive rescaling symmetry of one hidden neuron: ℓ(S_λ θ) = ℓ(θ) for all λ > 0, where S_λ
    multiplies the ``incoming`` coordinates (W₁[i, :], b₁[i]) by λ and the ``outgoing`` ones
    (W₂[:, i]) by 1/λ. Coordinates are flat indices into θ (d,) (parameters_to_vector order)."""

    d: int
    incoming: torch.Tensor  # (n_in,) long
    outgoing: torch.Tensor  # (n_out,) long
    meta: dict = field(default_factory=dict)

    def apply(self, theta: torch.Tensor, lam: float) -> torch.Tensor:
        """S_λ θ for λ > 0, θ of shape (..., d), floating (a new tensor; differentiable)."""
        lam = as_real(lam, "lam", positive=True)
        if not isinstance(theta, torch.Tensor) or theta.shape[-1:] != (self.d,):
            raise ValueError(f"theta must have shape (..., d={self.d})")
        if not theta.dtype.is_floating_point:  # an integer scale would truncate λ
            raise TypeError(f"theta must be a floating tensor, got dtype {theta.dtype}")
        scale = torch.ones(self.d, dtype=theta.dtype, device=theta.device)
        scale[self.incoming.to(theta.device)] = lam
        scale[self.outgoing.to(theta.device)] = 1.0 / lam
        return theta * scale

    def balance(self, theta: torch.Tensor) -> torch.Tensor:
        """‖in‖² − ‖out‖² (shape (...)): conserved by gradient flow on ℓ (Noether charge of the
        rescaling), driven to 0 by weight decay γ‖θ‖² (d/dt balance = −4γ · balance)."""
        if not isinstance(theta, torch.Tensor) or theta.shape[-1:] != (self.d,):
            raise ValueError(f"theta must have shape (..., d={self.d})")
        t_in = theta[..., self.incoming.to(theta.device)]
        t_out = theta[..., self.outgoing.to(theta.device)]
        return (t_in * t_in).sum(-1) - (t_out * t_out).sum(-1)

    def is_symmetric(
        self,
        loss: Callable[[torch.Tensor], torch.Tensor],
        trials: int = 2,
        *,
        lambdas: Sequence[float] = (0.37, 2.9),
        rtol: float = 1e-8,
        generator: torch.Generator | None = None,
    ) -> tuple[bool, float]:
        """Numerical check of ℓ(S_λ θ) = ℓ(θ) at ``trials`` θ ~ N(0, I) (float64) for each λ in
        ``lambdas``; returns (max relative gap <= rtol, max relative gap)."""
        if not callable(loss):
            raise TypeError("loss must be callable: theta (d,) -> scalar")
        trials = _check_trials(trials)
        rtol = _check_tol(rtol, "rtol")
        generator = torch_generator(generator)
        if isinstance(lambdas, (str, bytes)):
            raise TypeError(f"lambdas must be a sequence of numbers > 0, got {lambdas!r}")
        try:
            lambdas = tuple(lambdas)
        except TypeError:
            raise TypeError(
                f"lambdas must be a sequence of numbers > 0, got {type(lambdas).__name__}"
            ) from None
        if not lambdas:
            raise ValueError("lambdas must hold at least one λ > 0, got ()")
        checked = []
        for lam in lambdas:
            try:
                checked.append(as_real(lam, "lambdas", positive=True))
            except ValueError:
                raise ValueError(f"lambdas must be finite numbers > 0, got {lam!r}") from None
        lambdas = tuple(checked)
        worst = 0.0
        with torch.no_grad():
            for _ in range(trials):
                p = torch.randn(self.d, generator=generator, dtype=torch.float64)
                a = _loss_value(loss(p))
                for lam in lambdas:
                    b = _loss_value(loss(self.apply(p, lam)))
                    worst = max(worst, _relative_gap(a, b))
        return worst <= rtol, worst


def rescaling_symmetries(
    model: nn.Module,
    loss=None,
    *,
    on_fail: str = "drop",
    trials: int = 2,
    rtol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> list[Rescaling]:
    """Per-neuron positive rescalings (see :class:`Rescaling`) of every hidden layer whose
    activations are all positively homogeneous (ReLU, LeakyReLU, Identity or none), verified on
    ``loss`` when given (dropped or raised on failure, like the mirrors)."""
    layout, d = param_layout(model), _dim(model)
    out = []
    for name, first, acts, second in _untied_pairs(model):
        if not all(_positively_homogeneous(a) for a in acts):
            continue
        n_in = first.in_features + (1 if first.bias is not None else 0)
        for i, blk in enumerate(_neuron_blocks(layout, first, second)):
            r = Rescaling(d, blk[:n_in].clone(), blk[n_in:].clone())
            r.meta.update(symmetry="rescaling", layer=name, neuron=i)
            out.append(r)
    return _verify(out, loss, on_fail, trials, generator, rtol)


def hidden_index_mirror(
    model: nn.Module, params_axes: Sequence[tuple[torch.Tensor, int]], n: torch.Tensor
) -> Mirror:
    """Householder mirror acting on a shared hidden index: each (parameter, axis) gets
    P → P reflected along ``axis`` by I − 2nnᵀ. E.g. W_Q W_Kᵀ with nn.Linear q, k:
    ``[(q.weight, 0), (q.bias, 0), (k.weight, 0), (k.bias, 0)]``. Unverified: call
    :meth:`Mirror.is_symmetric`."""
    layout, d = param_layout(model), _dim(model)
    blocks = []
    for entry in params_axes:
        try:
            p, axis = entry
        except (TypeError, ValueError) as e:
            raise TypeError("params_axes must hold (parameter, axis) pairs") from e
        if id(p) not in layout:
            raise ValueError("params_axes: a parameter is not a parameter of model")
        off, shape = layout[id(p)]
        blocks.append((off, shape, axis))
    m = Mirror.householder(n, blocks, d)
    m.meta.update(symmetry="rotation")
    return m


def rotation_mirrors(
    model: nn.Module,
    loss=None,
    *,
    normals: Sequence[torch.Tensor] | None = None,
    on_fail: str = "drop",
    trials: int = 2,
    rtol: float = 1e-8,
    generator: torch.Generator | None = None,
) -> list[Mirror]:
    """Householder mirrors for Linear → [Identity]* → Linear (no nonlinearity). ``normals``: unit
    vectors in R^h to use (default: one random unit n per site, drawn from ``generator``)."""
    generator = torch_generator(generator)  # before the draws of the normals, not in _verify
    out = []
    for name, first, acts, second in _untied_pairs(model):
        if not all(isinstance(a, nn.Identity) for a in acts):
            continue
        h = first.out_features
        ns = normals
        if ns is None:
            z = torch.randn(h, generator=generator, dtype=torch.float64)
            ns = [z / z.norm()]
        for n in ns:
            if not isinstance(n, torch.Tensor) or n.shape != (h,):
                got = tuple(n.shape) if isinstance(n, torch.Tensor) else type(n).__name__
                raise ValueError(
                    f"normals: each must be a tensor of shape (h={h},) for layer pair {name}, "
                    f"got {got}"
                )
        pa = [(first.weight, 0)] + ([(first.bias, 0)] if first.bias is not None else [])
        pa.append((second.weight, 1))
        for n in ns:
            m = hidden_index_mirror(model, pa, n)
            m.meta.update(layer=name)
            out.append(m)
    return _verify(out, loss, on_fail, trials, generator, rtol)


def find_mirrors(
    model: nn.Module,
    loss=None,
    *,
    on_fail: str = "drop",
    trials: int = 2,
    rtol: float = 1e-8,
    generator: torch.Generator | None = None,
    max_pairs: int | None = None,
) -> dict[str, list[Mirror]]:
    """All the mirrors above: {"permutation": [...], "sign_flip": [...], "rotation": [...]},
    each verified against ``loss`` (θ (d,) → scalar, e.g. from :func:`flat_loss`) when given.
    A layer pair with tied weights is skipped, with one UserWarning naming it. The continuous
    positive rescalings of ReLU layers are not mirrors: see :func:`rescaling_symmetries`."""
    kw: dict[str, Any] = dict(on_fail=on_fail, trials=trials, rtol=rtol, generator=generator)
    with warnings.catch_warnings(record=True) as caught:  # each skipped pair: one warning
        warnings.simplefilter("always")
        found = {
            "permutation": permutation_mirrors(model, loss, max_pairs=max_pairs, **kw),
            "sign_flip": sign_flip_mirrors(model, loss, **kw),
            "rotation": rotation_mirrors(model, loss, **kw),
        }
    seen = set()
    for w in caught:
        if (w.category, str(w.message)) not in seen:
            seen.add((w.category, str(w.message)))
            warnings.warn(w.message, stacklevel=2)
    return found
