"""symkern.mirror: structured mirrors, detection, DCS, thresholds, Theorem 1(1). All float64."""

import copy
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from symkern.mirror import (
    DCS,
    GroupGateDCS,
    LowRankDCS,
    Mirror,
    critical_decay,
    detect,
    noise_lyapunov,
    projected_hessian_eigs,
    sample_curvatures,
    train_sweep,
)
from symkern.mirror.sweeps import closed_form_sparsity
from symkern.testing import assert_close

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_mirror(kind, d, seed=0):
    g = gen(seed)
    if kind == "dense":
        k = max(1, min(3, d))
        Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))
        return Mirror.dense(Q)
    if kind == "coordinates":
        return Mirror.coordinates(torch.randperm(d, generator=g)[: max(1, d // 2)], d)
    if kind == "rescaling_pairs":
        p = torch.randperm(d, generator=g)
        P = max(1, d // 3)
        return Mirror.rescaling_pairs(p[:P], p[P : 2 * P], d)
    if kind == "neuron_swap":
        p = torch.randperm(d, generator=g)
        B = max(1, d // 2 - 1)
        return Mirror.neuron_swap(p[:B], p[B : 2 * B], d)
    if kind == "householder":
        # theta = [vec U (m x h), vec W (p x h), extra]; hidden index = axis 1 of both
        h, m, p = 3, 1, max(1, (d - 3) // 3)
        z = torch.randn(h, generator=g, dtype=F64)
        return Mirror.householder(z / z.norm(), [(0, (m, h), 1), (m * h, (p, h), 1)], d)
    raise AssertionError(kind)


KINDS = ["dense", "coordinates", "rescaling_pairs", "neuron_swap", "householder"]


# ---------------------------------------------------------------- ops vs dense float64 reference
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [7, 13, 129])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ops_match_dense_reference(kind, d, dtype):
    m = make_mirror(kind, d)
    O = m.to_dense()
    assert O.shape == (d, m.k)
    assert_close(O.T @ O, torch.eye(m.k, dtype=F64), scale=1.0)
    th64 = torch.randn(2, 9, d, generator=gen(1), dtype=F64)[:, ::2]  # non-contiguous (2,5,d)
    th = th64.to(dtype)
    ref_c = th.double() @ O
    assert_close(m.coefficients(th), ref_c, scale=th64.abs().max().item())
    assert_close(m.reflect(th), th.double() - 2 * ref_c @ O.T)
    assert_close(m.project(th), th.double() - ref_c @ O.T)
    c, nrm = m.breaking(th)
    assert_close(nrm, ref_c.norm(dim=-1))
    assert m.reflect(th).dtype == dtype
    # empty batch and 1-D theta
    assert m.reflect(torch.zeros(0, d, dtype=dtype)).shape == (0, d)
    assert_close(m.project(th64[0, 0]), th64[0, 0] - O @ (O.T @ th64[0, 0]))


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), d=st.integers(7, 40), seed=st.integers(0, 10_000))
def test_projection_and_reflection_properties(kind, d, seed):
    m = make_mirror(kind, d, seed)
    a, b = torch.randn(2, d, generator=gen(seed + 1), dtype=F64)
    Pa, Pb = m.project(a), m.project(b)
    s = a.abs().max().item()
    assert_close(m.project(Pa), Pa, scale=s)  # idempotent
    assert abs(Pa @ b - a @ Pb) < 1e-12 * d * s * b.abs().max().item()  # self-adjoint
    assert m.coefficients(Pa).abs().max() < 1e-13 * d * s  # lands on O^T theta = 0
    assert_close(m.reflect(m.reflect(a)), a)  # involution
    assert abs(m.reflect(a).norm() - a.norm()) < 1e-12 * a.norm()  # isometry
    # reflect = 2 project - id
    assert_close(m.reflect(a), 2 * Pa - a, scale=s)


def test_structured_semantics():
    d = 10
    th = torch.randn(d, generator=gen(2), dtype=F64)
    # neuron swap exchanges the blocks exactly
    m = Mirror.neuron_swap([0, 1, 2], [5, 7, 9], d)
    r = m.reflect(th)
    assert_close(r[[0, 1, 2]], th[[5, 7, 9]])
    assert_close(r[[5, 7, 9]], th[[0, 1, 2]])
    assert_close(r[[3, 4, 6, 8]], th[[3, 4, 6, 8]])
    # rescaling pair flips both signs, group norms per pair
    m = Mirror.rescaling_pairs([0, 1], [2, 3], d)
    r = m.reflect(th)
    assert_close(r[:4], -th[:4])
    assert_close(r[4:], th[4:])
    assert_close(m.group_norms(th), torch.stack([th[[0, 2]].norm(), th[[1, 3]].norm()]))
    assert [mm.k for mm in m.split()] == [2, 2]
    # householder: U -> U(I - 2nn^T), W -> W(I - 2nn^T); projection gives U n = W n = 0
    mU, pW, h = 2, 3, 4
    n = torch.randn(h, generator=gen(3), dtype=F64)
    n = n / n.norm()
    d = mU * h + pW * h + 1
    th = torch.randn(d, generator=gen(4), dtype=F64)
    m = Mirror.householder(n, [(0, (mU, h), 1), (mU * h, (pW, h), 1)], d)
    U, W = th[: mU * h].view(mU, h), th[mU * h : -1].view(pW, h)
    R = torch.eye(h, dtype=F64) - 2 * torch.outer(n, n)
    r = m.reflect(th)
    assert_close(r[: mU * h].view(mU, h), U @ R)
    assert_close(r[mU * h : -1].view(pW, h), W @ R)
    assert r[-1] == th[-1]
    p = m.project(th)
    assert p[: mU * h].view(mU, h).matmul(n).abs().max() < 1e-14
    assert torch.linalg.matrix_rank(p[: mU * h].view(mU, h) @ p[mU * h : -1].view(pW, h).T) <= h - 1
    assert_close(U @ W.T, r[: mU * h].view(mU, h) @ r[mU * h : -1].view(pW, h).T)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    m = make_mirror(kind, 11)
    th = torch.randn(2, 11, generator=gen(5), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(m.reflect, (th,))
    assert torch.autograd.gradcheck(m.project, (th,))
    assert torch.autograd.gradcheck(lambda t: m.breaking(t)[1], (th,))


def test_is_symmetric_can_fail():
    m = Mirror.rescaling_pairs([0], [1], 3)
    beta = torch.tensor(0.7, dtype=F64)

    def sym(t):
        return (t[0] * t[1] - beta) ** 2 + t[2] ** 2

    def broken(t):
        return (t[0] * t[1] - beta) ** 2 + t[2] ** 2 + 0.1 * t[0]

    ok, gap = m.is_symmetric(sym, trials=4, generator=gen(0))
    assert ok and gap < 1e-14
    ok, gap = m.is_symmetric(broken, trials=4, generator=gen(0))
    assert not ok and gap > 1e-3
    ok, _ = m.is_symmetric(sym, torch.tensor([1.0, 2.0, 3.0], dtype=F64), trials=2)
    assert ok


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_naming_argument():
    Q = torch.randn(5, 2, dtype=F64)
    with pytest.raises(ValueError, match="O must have orthonormal"):
        Mirror.dense(Q)
    with pytest.raises(TypeError, match="O must"):
        Mirror.dense([[1.0], [0.0]])
    with pytest.raises(ValueError, match="O has k=3 > d=2"):
        Mirror.dense(torch.zeros(2, 3, dtype=F64))
    m = Mirror.coordinates([0, 1], 4)
    with pytest.raises(ValueError, match="theta must have shape"):
        m.reflect(torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="theta must be a floating"):
        m.project(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        Mirror.coordinates([0, 4], 4)
    with pytest.raises(ValueError, match="idx"):
        Mirror.coordinates([1, 1], 4)
    with pytest.raises(ValueError, match="block_j"):
        Mirror.neuron_swap([0, 1], [2], 4)
    with pytest.raises(ValueError, match="disjoint"):
        Mirror.neuron_swap([0, 1], [1, 2], 4)
    with pytest.raises(ValueError, match="w_idx"):
        Mirror.rescaling_pairs([0, 1], [2], 4)
    with pytest.raises(ValueError, match="n must be a unit"):
        Mirror.householder(torch.ones(2, dtype=F64), [(0, (2, 2), 1)], 4)
    with pytest.raises(ValueError, match="blocks"):
        Mirror.householder(torch.tensor([1.0, 0.0], dtype=F64), [(0, (2, 3), 1)], 6)
    with pytest.raises(ValueError, match="blocks"):
        Mirror.householder(torch.tensor([1.0, 0.0], dtype=F64), [(4, (2, 2), 1)], 6)
    with pytest.raises(ValueError, match="trials"):
        m.is_symmetric(lambda t: t.sum(), trials=0)
    with pytest.raises(ValueError, match="gamma"):
        DCS(m, gamma=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        LowRankDCS(3, 3, 2, gamma=-1.0)
    with pytest.raises(ValueError, match="eta"):
        noise_lyapunov([1.0], eta=0.0, gamma=0.1)
    with pytest.raises(ValueError, match="gamma"):
        noise_lyapunov([1.0], eta=0.1, gamma=-0.1)
    with pytest.raises(ValueError, match="iters"):
        critical_decay(lambda t: t.sum(), torch.zeros(4, dtype=F64), m, iters=0)
    with pytest.raises(TypeError, match="mirror"):
        critical_decay(lambda t: t.sum(), torch.zeros(4, dtype=F64), "O")
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    f = detect.flat_loss(model, nn.functional.mse_loss, torch.zeros(4, 2), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="theta must have shape"):
        f(torch.zeros(5, dtype=F64))
    big = Mirror.coordinates([0], 30)  # d mismatch with the model's 13 parameters
    with pytest.raises(ValueError, match="theta"):
        big.is_symmetric(f, torch.zeros(13, dtype=F64))
    with pytest.raises(ValueError, match="batch_size"):
        sample_curvatures(
            lambda t, x: t.sum(), torch.zeros(4, dtype=F64), m, [torch.zeros(3)], 5, 1
        )


# ---------------------------------------------------------------- detection
def _data(n_in, n_out, N=32, seed=0):
    g = gen(seed)
    return torch.randn(N, n_in, generator=g, dtype=F64), torch.randn(
        N, n_out, generator=g, dtype=F64
    )


def test_detect_tanh_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = _data(3, 2)
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    found = detect.find_mirrors(model, loss, generator=gen(1))
    assert len(found["permutation"]) == 6 and len(found["sign_flip"]) == 4
    assert found["rotation"] == []
    for ms in found.values():
        for m in ms:
            assert m.meta["verified"] and m.meta["gap"] < 1e-12
    # neuron (1, 3) swap is exactly the permuted model
    m = [m for m in found["permutation"] if m.meta["neurons"] == (1, 3)][0]
    theta = nn.utils.parameters_to_vector(model.parameters()).detach()
    r = m.reflect(theta)
    W1 = r[:12].view(4, 3)
    assert_close(W1[1], model[0].weight[3].detach())
    assert_close(r[12:16][3], model[0].bias[1].detach())
    assert_close(r[16:24].view(2, 4)[:, 1], model[2].weight[:, 3].detach())


def test_detect_relu_has_no_sign_flip_and_verification_drops():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x, y = _data(3, 1)
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    assert detect.sign_flip_mirrors(model, loss) == []
    # the sign flip of a ReLU neuron is really not a symmetry (so not detecting it is right)
    layout = detect.param_layout(model)
    blk = detect._neuron_blocks(layout, model[0], model[2])[0]
    flip = Mirror.coordinates(blk, 21)
    assert not flip.is_symmetric(loss, generator=gen(0))[0]
    assert len(detect.permutation_mirrors(model, loss)) == 6

    # a loss that singles out neuron 0 breaks the 3 swaps involving it: verification drops them
    def loss_broken(t):
        return loss(t) + 0.3 * t[0] ** 2  # W1[0, 0] only

    kept = detect.permutation_mirrors(model, loss_broken)
    assert sorted(m.meta["neurons"] for m in kept) == [(1, 2), (1, 3), (2, 3)]
    with pytest.raises(ValueError, match="not a symmetry"):
        detect.permutation_mirrors(model, loss_broken, on_fail="raise")


def test_detect_relu_rescaling():
    """ReLU neurons: one positive rescaling each, verified on the loss; the balance
    ‖in‖² − ‖out‖² is conserved by small-step GD; a dead neuron gets zero gradient; tanh layers
    have none; a mis-built rescaling (neuron 2 in, neuron 3 out) fails verification."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x, y = _data(3, 2)
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    found = detect.rescaling_symmetries(model, loss, generator=gen(2))
    assert [r.meta["neuron"] for r in found] == [0, 1, 2, 3]
    assert all(r.meta["verified"] and r.meta["gap"] < 1e-12 for r in found)
    r = found[2]
    assert r.incoming.tolist() == [6, 7, 8, 14] and r.outgoing.tolist() == [18, 22]
    theta = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    assert_close(r.apply(r.apply(theta, 2.5), 0.4), theta)
    with pytest.raises(ValueError, match="lam"):
        r.apply(theta, -1.0)
    # gradient flow conserves the balance: tiny steps, drift O(step²)
    b0 = r.balance(theta)
    t = theta.clone()
    for _ in range(200):
        t = t - 1e-4 * torch.func.grad(loss)(t)
    assert abs(float(r.balance(t) - b0)) < 1e-6 * max(1.0, abs(float(b0)))
    # the dead-neuron set is invariant: zero gradient on the neuron's coordinates
    dead = theta.clone()
    dead[torch.cat([r.incoming, r.outgoing])] = 0.0
    g = torch.func.grad(loss)(dead)
    assert g[torch.cat([r.incoming, r.outgoing])].abs().max() == 0.0
    wrong = detect.Rescaling(r.d, r.incoming, found[3].outgoing)
    assert not wrong.is_symmetric(loss, generator=gen(3))[0]
    tanh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    assert detect.rescaling_symmetries(tanh) == []


def test_detect_rotation_linear_linear_and_qk():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)).double()
    x, y = _data(3, 2)
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    rot = detect.rotation_mirrors(model, loss, generator=gen(2))
    assert len(rot) == 1 and rot[0].k == 3 + 1 + 2 and rot[0].meta["gap"] < 1e-12
    # project -> rank of W2 W1 drops to <= 4
    theta = nn.utils.parameters_to_vector(model.parameters()).detach()
    p = rot[0].project(theta)
    W1, b1, W2 = p[:15].view(5, 3), p[15:20], p[20:30].view(2, 5)
    n = rot[0].meta["n"]
    assert (n @ W1).abs().max() < 1e-14 and (n @ b1).abs() < 1e-14 and (W2 @ n).abs().max() < 1e-14

    class QK(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 4)

        def forward(self, x):
            s = self.q(x) @ self.k(x).transpose(-1, -2)
            return torch.softmax(s, -1) @ self.v(x)

    qk = QK().double()
    xs = torch.randn(2, 5, 4, generator=gen(3), dtype=F64)
    L = detect.flat_loss(qk, lambda o, t: ((o - t) ** 2).mean(), xs, xs)
    n = torch.tensor([0.6, 0.0, 0.8], dtype=F64)
    m = detect.hidden_index_mirror(
        qk, [(qk.q.weight, 0), (qk.q.bias, 0), (qk.k.weight, 0), (qk.k.bias, 0)], n
    )
    assert m.is_symmetric(L, generator=gen(4))[0]
    wrong = detect.hidden_index_mirror(qk, [(qk.q.weight, 0), (qk.q.bias, 0)], n)  # Q only
    assert not wrong.is_symmetric(L, generator=gen(4))[0]


def test_flat_loss_batchnorm_float64_and_no_side_effects():
    """A float32 model with BatchNorm: flat_loss evaluates at float64 θ (its float32 buffers used
    to break the Double check), gives the model's own loss in its current mode, and never
    touches the running statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.BatchNorm1d(2))
    x, y = _data(4, 2)
    bn = model[3]
    with torch.no_grad():  # non-trivial running statistics, so eval mode differs from train mode
        bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    theta = nn.utils.parameters_to_vector(model.parameters()).detach().to(F64)
    for train in (True, False):
        model.train(train)
        ref = copy.deepcopy(model).double()  # the model's own loss, on a copy
        assert_close(loss(theta), nn.functional.mse_loss(ref(x), y), rtol=1e-12, atol=0)
        found = detect.find_mirrors(model, loss, generator=gen(3))
        assert len(found["permutation"]) == 3 and len(found["sign_flip"]) == 3
        assert all(m.meta["verified"] for m in found["permutation"] + found["sign_flip"])
    assert model.training is False  # the mode is the caller's, left as it is
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    g = torch.func.grad(loss)(theta)  # still differentiable in θ
    assert g.dtype == F64 and torch.isfinite(g).all() and g.abs().max() > 0


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.GELU])
def test_activation_instance_used_twice_counts_at_each_place(act):
    """``a = act(); Sequential(lin, a, lin, a, lin)``: named_children listed ``a`` once, so the
    second pair looked linear and got sign flips / rotations / rescalings through ReLU or GELU
    (found by an audit). Every structural claim must now hold on the model's loss."""
    torch.manual_seed(0)
    a = act()
    model = nn.Sequential(nn.Linear(3, 5), a, nn.Linear(5, 5), a, nn.Linear(5, 2)).double()
    assert [(name, len(acts)) for name, _, acts, _ in detect.linear_pairs(model)] == [
        ("0->2", 1),
        ("2->4", 1),
    ]
    loss = detect.flat_loss(model, nn.functional.mse_loss, *_data(3, 2))
    found = detect.find_mirrors(model, generator=gen(2))  # structural: no loss
    assert found["rotation"] == []
    assert len(found["sign_flip"]) == (10 if act is nn.Tanh else 0)
    assert len(found["permutation"]) == 20
    for m in found["permutation"] + found["sign_flip"]:
        assert m.meta["verified"] is False  # unverified claims say so
        ok, gap = m.is_symmetric(loss, generator=gen(3))
        assert ok, (m.meta, gap)
    rescalings = detect.rescaling_symmetries(model)
    assert len(rescalings) == (10 if act is nn.ReLU else 0)
    for r in rescalings:
        assert r.is_symmetric(loss, generator=gen(4))[0], r.meta


def test_nondeterministic_loss_is_refused():
    """A train-mode Dropout makes the loss random: verification dropped every true mirror and
    reported none (found by an audit). It is now a ValueError; in eval mode they verify."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.2), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    loss = detect.flat_loss(model, nn.functional.mse_loss, *_data(3, 2))
    with pytest.raises(ValueError, match="loss is not deterministic.*model.eval"):
        detect.find_mirrors(model, loss, generator=gen(1))
    relu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="not deterministic"):
        detect.rescaling_symmetries(relu, loss=lambda t: torch.rand(()))
    model.eval()
    found = detect.find_mirrors(model, loss, generator=gen(1))
    assert len(found["permutation"]) == 6 and len(found["sign_flip"]) == 4
    assert all(m.meta["verified"] for m in found["permutation"] + found["sign_flip"])


@pytest.mark.parametrize("wrap", ["weight_norm", "orthogonal", "spectral_norm"])
def test_parametrised_layer_pair_is_skipped_with_a_warning(wrap):
    """A parametrised weight is computed, not a parameter: detection raised a bare KeyError and
    lost the other pairs too (found by an audit). The pair is skipped, naming it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    getattr(nn.utils.parametrizations, wrap)(model[4])
    model.double()
    with pytest.warns(UserWarning, match="layer pair 2->4 skipped: a weight is computed"):
        found = detect.find_mirrors(model)
    assert {m.meta["layer"] for m in found["permutation"]} == {"0->2"}
    with pytest.warns(UserWarning, match="2->4 skipped"):
        assert {r.meta["layer"] for r in detect.rescaling_symmetries(model)} == {"0->2"}


def test_no_pair_found_warns_that_only_sequentials_are_searched():
    class Net(nn.Module):  # an MLP written without nn.Sequential
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, 4), nn.Linear(4, 2)])

        def forward(self, x):
            return self.layers[1](torch.tanh(self.layers[0](x)))

    with pytest.warns(UserWarning, match="searches nn.Sequential containers only"):
        assert detect.find_mirrors(Net()) == {"permutation": [], "sign_flip": [], "rotation": []}
    with warnings.catch_warnings():  # one Linear: nothing to pair, nothing to say
        warnings.simplefilter("error")
        assert detect.find_mirrors(nn.Sequential(nn.Linear(3, 2), nn.Tanh()))["permutation"] == []


def test_flat_loss_leaves_theta_alone_when_a_module_writes_its_weights():
    """nn.Embedding(max_norm=...) renormalises its rows in place: it wrote into the caller's θ
    (and raised for a θ requiring grad), breaking "without side effects" (found by an audit)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 3, max_norm=1.0), nn.Flatten(), nn.Linear(6, 1)).double()
    x, y = torch.tensor([[0, 3], [4, 1]]), torch.randn(2, 1, dtype=F64)
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    theta = 5 * torch.randn(detect._dim(model), dtype=F64)
    before = theta.clone()
    loss(theta)
    assert torch.equal(theta, before)
    g = torch.func.grad(loss)(theta.requires_grad_())
    assert torch.isfinite(g).all() and torch.equal(theta.detach(), before)


def test_rotation_normals_are_checked_naming_the_argument():
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)).double()
    with pytest.raises(ValueError, match=r"normals: each must be a tensor of shape \(h=5,\)"):
        detect.rotation_mirrors(model, normals=[torch.ones(4, dtype=F64) / 2])


def test_tied_layer_pair_is_skipped_with_a_warning():
    """W₂ = W₁ (tied): a neuron's coordinates overlap, so no neuron swap / sign flip / rescaling
    / rotation is a coordinate symmetry: the pair is skipped with one warning naming it (it used
    to raise about block_i / block_j, arguments the user never passed)."""
    torch.manual_seed(0)
    for act in (nn.Tanh(), nn.ReLU(), nn.Identity()):
        net = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4)).double()
        net[2].weight = net[0].weight
        x, y = _data(4, 4)
        loss = detect.flat_loss(net, nn.functional.mse_loss, x, y)
        with pytest.warns(UserWarning, match=r"layer pair 0->2 skipped: .*tied \(0.weight = 2.w"):
            found = detect.find_mirrors(net, loss)
        assert found == {"permutation": [], "sign_flip": [], "rotation": []}
        with pytest.warns(UserWarning, match="tied"):
            assert detect.rescaling_symmetries(net) == []
    # three layers, the outer weights tied: both pairs skipped, one warning each
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    net[4].weight = net[0].weight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sum(len(v) for v in detect.find_mirrors(net).values()) == 0
    msgs = sorted(str(w.message) for w in caught)
    assert len(msgs) == 2 and "0->2" in msgs[0] and "2->4" in msgs[1], msgs
    # a pair none of whose parameters is tied is still found (b₁ of pair 2->4 = its output bias)
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    net[4].bias = net[2].bias
    with pytest.warns(UserWarning, match="2->4 skipped") as rec:
        found = detect.find_mirrors(net)
    assert len(rec) == 1
    assert {m.meta["layer"] for m in found["permutation"]} == {"0->2"}
    assert len(found["permutation"]) == 6 and len(found["sign_flip"]) == 4


# ---------------------------------------------------------------- DCS
def _gd(module, loss, steps, lr):
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (loss(module()) + module.penalty()).backward()
        opt.step()


BETA = torch.tensor([2.0, -1.5, 0.8, -0.3, 0.1, 0.0, -0.75], dtype=F64)


def test_dcs_l1_soft_threshold_population_loss():
    # exact population loss E(θᵀx − y)² = ‖θ − β‖² + σ² for x ~ N(0, I)
    gamma = 0.5
    mod = DCS.l1(7, gamma, generator=gen(0), init_scale=0.5)
    _gd(mod, lambda t: ((t - BETA) ** 2).sum(), 3000, 0.1)
    theta = mod().detach()
    ref = torch.sign(BETA) * torch.clamp(BETA.abs() - gamma, min=0)
    assert_close(theta, ref, atol=1e-9, rtol=1e-8)
    dead = BETA.abs() < gamma
    assert theta[dead].abs().max() < 1e-8
    assert theta[~dead].abs().min() > 0.2
    # plain ridge with the same decay is never sparse: β/(1+γ)
    assert (BETA[BETA != 0] / (1 + gamma)).abs().min() > 0.05


def test_rescaling_regression_whitened_data_matches_closed_form():
    # finite sample x ~ N(0, I) whitened so that XᵀX/N = I exactly; then the closed form holds
    # exactly with β̂ = Xᵀy/N: θ = u ⊙ w, loss mean (θᵀx − y)² + γ(‖u‖² + ‖w‖²)
    N, d, gamma = 200, 7, 0.5
    g = gen(1)
    X, _ = torch.linalg.qr(torch.randn(N, d, generator=g, dtype=F64))
    X = X * math.sqrt(N)
    y = X @ BETA + 0.3 * torch.randn(N, generator=g, dtype=F64)
    bhat = X.T @ y / N
    u = (0.5 * torch.randn(d, generator=g, dtype=F64)).requires_grad_()
    w = (0.5 * torch.randn(d, generator=g, dtype=F64)).requires_grad_()
    opt = torch.optim.SGD([u, w], lr=0.1)
    for _ in range(2500):
        opt.zero_grad()
        (((X @ (u * w) - y) ** 2).mean() + gamma * (u.pow(2).sum() + w.pow(2).sum())).backward()
        opt.step()
    theta = (u * w).detach()
    ref = torch.sign(bhat) * torch.clamp(bhat.abs() - gamma, min=0)
    assert_close(theta, ref, atol=1e-8, rtol=1e-7)
    m = Mirror.rescaling_pairs(range(d), range(d, 2 * d), 2 * d)
    gn = m.group_norms(torch.cat([u, w]).detach())
    assert torch.equal(gn < 1e-8, bhat.abs() < gamma)


def test_dcs_general_mirror_closed_form():
    # ℓ = ‖θ − β‖², O dense (k=2): O-part soft-thresholded at γ, rest ridge-shrunk P β/(1+γ)
    d, gamma = 6, 0.4
    Q, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen(2), dtype=F64))
    m = Mirror.dense(Q)
    beta = torch.randn(d, generator=gen(3), dtype=F64)
    c = Q.T @ beta
    beta = beta + Q @ (torch.tensor([1.5, 0.2], dtype=F64) * torch.sign(c) - c)  # |c| = 1.5, 0.2
    mod = DCS(m, gamma, generator=gen(4), init_scale=0.5)
    _gd(mod, lambda t: ((t - beta) ** 2).sum(), 3000, 0.1)
    theta = mod().detach()
    cb = Q.T @ beta
    ref = m.project(beta) / (1 + gamma) + Q @ (
        torch.sign(cb) * torch.clamp(cb.abs() - gamma, min=0)
    )
    assert_close(theta, ref, atol=1e-9, rtol=1e-8)
    assert mod.constrained().detach()[1].abs() < 1e-8 and mod.constrained().detach()[0].abs() > 1


def test_group_gate_dcs_group_lasso():
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    beta = torch.tensor([1.0, -1.0, 0.1, 0.2, -0.1, 3.0], dtype=F64)
    gamma = 0.6
    mod = GroupGateDCS(groups, gamma, generator=gen(0), init=0.3 * torch.ones(6, dtype=F64))
    _gd(mod, lambda t: ((t - beta) ** 2).sum(), 3000, 0.1)
    theta = mod().detach()
    gnorm = torch.zeros(3, dtype=F64).index_add(0, groups, beta**2).sqrt()
    shrink = torch.clamp(1 - gamma / gnorm, min=0)[groups]
    assert_close(theta, beta * shrink, atol=1e-9, rtol=1e-8)
    assert theta[2:5].abs().max() < 1e-8


def test_low_rank_dcs_singular_value_threshold():
    g = gen(5)
    Uq, _ = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=F64))
    Vq, _ = torch.linalg.qr(torch.randn(5, 4, generator=g, dtype=F64))
    sig = torch.tensor([3.0, 2.0, 0.6, 0.3], dtype=F64)
    A = Uq @ torch.diag(sig) @ Vq.T
    gamma = 1.0
    mod = LowRankDCS(6, 5, 4, gamma, generator=g, init_scale=0.5)
    _gd(mod, lambda W: ((W - A) ** 2).sum(), 3000, 0.05)
    s = torch.linalg.svdvals(mod().detach())
    ref = torch.clamp(torch.cat([sig, torch.zeros(1, dtype=F64)]) - gamma, min=0)
    assert_close(s, ref, atol=1e-8, rtol=1e-7)
    assert s[2:].max() < 1e-8


# ---------------------------------------------------------------- thresholds
def test_lanczos_matches_dense_projected_hessian():
    d, k = 40, 12
    g = gen(6)
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))
    m = Mirror.dense(Q)
    B = torch.randn(d, d, generator=g, dtype=F64)
    A = B + B.T

    def loss(t):
        return 0.5 * t @ A @ t + (t**3).sum() / 3

    theta = torch.randn(d, generator=g, dtype=F64)
    tp = m.project(theta)
    H = A + torch.diag(2 * tp)
    ref = torch.linalg.eigvalsh(Q.T @ H @ Q)
    res = projected_hessian_eigs(loss, theta, m, iters=k, generator=g)
    assert res.exhausted
    assert_close(res.ritz, ref)
    assert critical_decay(loss, theta, m, generator=g) == pytest.approx(
        -0.5 * ref[0].item(), rel=1e-10
    )


def _tanh_data(N=64, seed=7):
    g = gen(seed)
    x = torch.randn(N, generator=g, dtype=F64)
    y = 0.4 * x + 0.3 * torch.randn(N, generator=g, dtype=F64)
    return x, y


def test_critical_decay_tanh_neuron_and_training_on_off():
    # f(x) = u tanh(w x), L = mean (f − y)², mirror (u, w) → (−u, −w) (tanh odd), θ_∥ = 0:
    # Oᵀ∇²L O = [[0, −2E[xy]], [−2E[xy], 0]] ⇒ γ* = |E[xy]| (empirical mean over the data)
    x, y = _tanh_data()

    def loss(t):
        return ((t[0] * torch.tanh(t[1] * x) - y) ** 2).mean()

    m = Mirror.coordinates([0, 1], 2)
    exy = (x * y).mean().abs().item()
    gstar = critical_decay(loss, torch.tensor([0.3, -0.2], dtype=F64), m)
    assert gstar == pytest.approx(exy, rel=1e-12)
    # training: slightly above γ* → lands on the constraint; slightly below → stays off
    for factor, on in ((1.2, True), (0.8, False)):
        t = torch.tensor([0.5, 0.5], dtype=F64, requires_grad=True)
        opt = torch.optim.SGD([t], lr=0.2)
        for _ in range(3000):
            opt.zero_grad()
            (loss(t) + factor * gstar * t.pow(2).sum()).backward()
            opt.step()
        nrm = m.breaking(t.detach())[1].item()
        assert (nrm < 1e-8) if on else (nrm > 1e-2), (factor, nrm)


def test_critical_decay_rescaling_regression_per_pair():
    d = BETA.numel()

    def loss(t):  # population loss of θ = u ⊙ w regression
        return ((t[:d] * t[d:] - BETA) ** 2).sum()

    m = Mirror.rescaling_pairs(range(d), range(d, 2 * d), 2 * d)
    theta = torch.randn(2 * d, generator=gen(8), dtype=F64)
    g = critical_decay(loss, theta, m, per_group=True, generator=gen(9))
    assert_close(g, BETA.abs(), atol=1e-12)
    # all pairs together: the most unstable pair
    assert critical_decay(loss, theta, m) == pytest.approx(BETA.abs().max().item(), rel=1e-12)


def test_critical_decay_per_group_is_taken_at_the_whole_mirrors_point():
    """per_group evaluated each pair at θ with only that pair zeroed, the other pairs at their
    off-constraint values: with a loss that couples the pairs (correlated features of a u ⊙ w
    regression), a pair's γ* came out above the whole mirror's. Now every group's γ* is −½ λ_min
    of its diagonal block of the dense Hessian at the one point θ_∥ = (I − OOᵀ)θ."""
    d = 3
    g = gen(21)
    X = torch.randn(40, d, generator=g, dtype=F64) @ torch.tensor(
        [[1.0, 0.8, 0.0], [0.0, 1.0, 0.7], [0.0, 0.0, 1.0]], dtype=F64
    )  # correlated features
    y = X @ torch.tensor([1.5, -1.0, 0.5], dtype=F64)

    def loss(t):
        return ((X @ (t[:d] * t[d:]) - y) ** 2).mean()

    m = Mirror.rescaling_pairs(range(d), range(d, 2 * d), 2 * d)
    theta = torch.randn(2 * d, generator=g, dtype=F64)
    per = critical_decay(loss, theta, m, per_group=True, generator=gen(22))
    at = m.project(theta)  # the u and w of every pair zeroed: here θ_∥ = 0
    H = torch.autograd.functional.hessian(loss, at)  # O's columns: e_u, e_w of each pair
    want = [-0.5 * torch.linalg.eigvalsh(H[[j, d + j]][:, [j, d + j]]).min().item()
            for j in range(d)]  # fmt: skip
    assert_close(per, torch.tensor(want, dtype=F64), atol=1e-10)
    whole = critical_decay(loss, theta, m, generator=gen(23))
    assert per.max().item() <= whole + 1e-10
    assert whole == pytest.approx(-0.5 * torch.linalg.eigvalsh(H).min().item(), rel=1e-9)


def test_noise_lyapunov_sign_flip_and_simulation():
    # h two-point: E[h] + 2γ = −0.5 < 0 (GD along O would escape), yet large-η SGD is attracted
    g = gen(10)
    h = torch.where(
        torch.rand(4000, generator=g) < 0.5, torch.tensor(-4.0), torch.tensor(3.0)
    ).double()
    gamma = 0.0
    assert h.mean() + 2 * gamma < 0
    lam_small = noise_lyapunov(h, 0.01, gamma)
    lam_large = noise_lyapunov(h, 0.3, gamma)
    exact_large = 0.5 * (math.log(abs(1 + 0.3 * 4)) + math.log(abs(1 - 0.3 * 3)))
    assert lam_small > 0 > lam_large
    assert lam_large == pytest.approx(exact_large, abs=0.05)
    # the linear recursion z ← (1 − η(h_t + 2γ)) z follows the sign of λ
    for eta, lam in ((0.01, lam_small), (0.3, lam_large)):
        logz = torch.log(torch.abs(1 - eta * (h + 2 * gamma))).sum().item()
        assert logz / h.numel() == pytest.approx(lam, rel=1e-12)
        assert (logz > 0) == (lam > 0)


def test_sample_curvatures_uw_regression_and_sgd_collapse():
    # θ = (u, w), f = u w x; at θ_∥ = 0 the batch Hessian along O = I is [[0, −2m_B], [−2m_B, 0]],
    # m_B = mean_B(xy); default direction = λ_min eigvector of the full data ⇒ h_B = −2 s m_B.
    x, y = _tanh_data(N=256)

    def loss(t, xb, yb):
        return ((t[0] * t[1] * xb - yb) ** 2).mean()

    m = Mirror.coordinates([0, 1], 2)
    s = torch.sign((x * y).mean())
    h, idx = sample_curvatures(
        loss,
        torch.tensor([0.1, 0.2], dtype=F64),
        m,
        (x, y),
        1,
        200,
        generator=gen(11),
        return_indices=True,
    )
    ref = -2 * s * (x[idx] * y[idx]).mean(1)
    assert_close(h, ref)
    hfull = sample_curvatures(loss, torch.zeros(2, dtype=F64), m, (x, y), 256, 1)
    assert hfull.item() == pytest.approx(-2 * (x * y).mean().abs().item(), rel=1e-12)
    # weak signal, γ = 0: E[h] < 0 (GD escapes 0), but the batch-1 exponent flips sign with η
    g = gen(7)
    x = torch.randn(256, generator=g, dtype=F64)
    y = 0.1 * x + 0.5 * torch.randn(256, generator=g, dtype=F64)
    h = sample_curvatures(loss, torch.zeros(2, dtype=F64), m, (x, y), 1, 400, generator=gen(11))
    assert h.mean() < 0
    assert noise_lyapunov(h, 0.1, 0.0) > 0
    assert noise_lyapunov(h, 0.8, 0.0) < -0.05


# ---------------------------------------------------------------- Theorem 1(1)
def test_theorem1_sgd_stays_on_constraint_uw():
    g = gen(12)
    N, d = 64, 4
    X = torch.randn(N, d, generator=g, dtype=F64)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=F64) + 0.1 * torch.randn(
        N, generator=g, dtype=F64
    )
    t = torch.randn(2 * d, generator=g, dtype=F64)
    t[[1, 1 + d]] = 0.0  # pair 1 on the constraint
    t.requires_grad_()
    m = Mirror.rescaling_pairs([1], [1 + d], 2 * d)
    other = Mirror.rescaling_pairs([2], [2 + d], 2 * d)
    opt = torch.optim.SGD([t], lr=0.05, weight_decay=2 * 0.01)  # torch wd = 2γ for ℓ + γ‖θ‖²
    start_other = other.breaking(t.detach())[1].item()
    for _ in range(300):
        b = torch.randint(0, N, (8,), generator=g)
        opt.zero_grad()
        ((X[b] @ (t[:d] * t[d:]) - y[b]) ** 2).mean().backward()
        opt.step()
    assert m.breaking(t.detach())[1].item() == 0.0
    assert abs(other.breaking(t.detach())[1].item() - start_other) > 1e-2  # off-constraint moves


@pytest.mark.parametrize("broken", [False, True])
def test_theorem1_sgd_neuron_swap_mlp(broken):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    with torch.no_grad():  # neurons 1 and 3 identical
        model[0].weight[3] = model[0].weight[1]
        model[0].bias[3] = model[0].bias[1]
        model[2].weight[:, 3] = model[2].weight[:, 1]
    m = [mm for mm in detect.permutation_mirrors(model) if mm.meta["neurons"] == (1, 3)][0]
    theta0 = nn.utils.parameters_to_vector(model.parameters()).detach()
    assert m.breaking(theta0)[1].item() == 0.0
    g = gen(13)
    X, Y = torch.randn(128, 3, generator=g, dtype=F64), torch.randn(128, 2, generator=g, dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.02)
    for _ in range(200):
        b = torch.randint(0, 128, (16,), generator=g)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X[b]), Y[b])
        if broken:  # a term that is not swap-symmetric
            loss = loss + 0.05 * model[0].weight[1, 0]
        loss.backward()
        opt.step()
    nrm = m.breaking(nn.utils.parameters_to_vector(model.parameters()).detach())[1].item()
    if broken:
        assert nrm > 1e-3
    else:
        assert nrm < 1e-12


# ---------------------------------------------------------------- input validation (audit)
def test_index_arguments_must_be_integers():
    """Index lists with floats or bools are rejected, never truncated (0.7 → 0) or read as 0/1."""
    msg = r"idx must be a sequence of integers \(not floats or bools\), got"
    for idx in ([0.7, 1.2], [True, False], [0, True], np.array([0.9, 2.2]), np.array([1, 0]) > 0):
        with pytest.raises(TypeError, match=msg):
            Mirror.coordinates(idx, 3)
    with pytest.raises(TypeError, match="idx must be an integer index tensor"):
        Mirror.coordinates(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(TypeError, match="u_idx must be a sequence of integers"):
        Mirror.rescaling_pairs([0.5], [1], 3)
    with pytest.raises(TypeError, match="block_j must be a sequence of integers"):
        Mirror.neuron_swap([0], [1.0], 3)
    with pytest.raises(TypeError, match="groups must be a sequence of integers"):
        Mirror.coordinates([0, 1], 3, groups=[0.0, 1.0])
    # integer inputs of every kind still work, unchanged
    for idx in ([2, 0], (2, 0), np.array([2, 0]), [np.int64(2), np.int32(0)], torch.tensor([2, 0])):
        assert Mirror.coordinates(idx, 3).index.reshape(-1).tolist() == [2, 0]
    assert Mirror.coordinates(range(3), 3).k == 3
    with pytest.raises(ValueError, match="idx must select at least one"):
        Mirror.coordinates([], 3)


def test_householder_blocks_must_be_integers_and_n_finite():
    n = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(TypeError, match="blocks: each entry of shape must be an int, got 2.7"):
        Mirror.householder(n, [(0, (2.7, 2), 1)], 4)
    with pytest.raises(TypeError, match="blocks: offset must be an int, got 0.9"):
        Mirror.householder(n, [(0.9, (2, 2), 1)], 5)
    with pytest.raises(TypeError, match="blocks: offset must be an int, got True"):
        Mirror.householder(n, [(True, (2, 2), 1)], 5)
    with pytest.raises(TypeError, match="blocks: axis must be an int, got 1.0"):
        Mirror.householder(n, [(0, (2, 2), 1.0)], 4)
    with pytest.raises(ValueError, match=r"blocks: shape must have sizes >= 0, got \(-1, 2\)"):
        Mirror.householder(n, [(0, (-1, 2), 1)], 4)
    for bad in ([math.nan, 0.0], [math.inf, 0.0]):
        with pytest.raises(ValueError, match="n must be a finite unit vector"):
            Mirror.householder(torch.tensor(bad, dtype=F64), [(0, (2, 2), 1)], 4)
    # integer-valued numpy / tensor entries are fine
    m = Mirror.householder(n, [(np.int64(0), (torch.tensor(2), 2), 1)], 4)
    assert m.k == 2


def test_tolerances_must_be_finite_and_nan_fails_orthonormality():
    with pytest.raises(ValueError, match="tol must be a finite number >= 0, got nan"):
        Mirror.dense(torch.ones(3, 1, dtype=F64), tol=math.nan)
    for tol in (-1.0, math.inf, "1e-5"):
        with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
            Mirror.dense(torch.eye(3, 1, dtype=F64), tol=tol)
    # a NaN column norm fails the orthonormality check (it used to pass: nan > tol is False)
    with pytest.raises(ValueError, match="O must have orthonormal columns"):
        Mirror(torch.tensor([[0, 1]]), torch.tensor([[math.nan, 0.0]]), 3)
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        Mirror(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), 3)
    m = Mirror.coordinates([0], 2)
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0, got nan"):
        m.is_symmetric(lambda t: t.pow(2).sum(), rtol=math.nan)
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        projected_hessian_eigs(lambda t: t.pow(2).sum(), torch.zeros(2, dtype=F64), m, tol=-1.0)


def test_sparse_mirror_without_index_or_value_is_a_type_error():
    # a None index / value used to reach index.ndim / value.shape: AttributeError on NoneType
    with pytest.raises(TypeError, match="index and value .* are required unless dense"):
        Mirror(None, None, 3)
    with pytest.raises(TypeError, match="index and value .* are required unless dense"):
        Mirror(torch.tensor([[0]]), None, 3)


def test_lanczos_without_a_nonzero_start_vector_says_so(monkeypatch):
    # not reachable with a real generator (three Gaussian draws of norm <= 1e-8): a zero start
    # vector used to fail later with a bare "can't assign a NoneType to a torch.DoubleTensor"
    monkeypatch.setattr(torch, "randn", lambda n, **kw: torch.zeros(n, dtype=kw.get("dtype")))
    with pytest.raises(RuntimeError, match="no nonzero random start vector"):
        projected_hessian_eigs(
            lambda t: t.pow(2).sum(), torch.ones(2, dtype=F64), Mirror.coordinates([0], 2)
        )


def test_negative_groups_rejected():
    with pytest.raises(ValueError, match=r"groups must be non-negative ints, got \[-1, 0\]"):
        Mirror.coordinates([0, 1], 3, groups=[-1, 0])


def test_symmetry_checks_need_trials_and_a_scalar_loss():
    """trials = 0 checks nothing, so it must not report 'verified'; a vector-valued loss is named
    as such."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()

    def not_symmetric(t):
        return t.sum()

    for trials in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"trials must be .*int.*, got"):
            detect.rescaling_symmetries(model, not_symmetric, trials=trials)
    with pytest.raises(ValueError, match=r"trials must be .*int.*, got 0"):
        detect.find_mirrors(model, not_symmetric, trials=0)
    r = detect.rescaling_symmetries(model)[0]
    with pytest.raises(ValueError, match=r"trials must be .*int.*, got 0"):
        r.is_symmetric(not_symmetric, trials=0)
    with pytest.raises(ValueError, match="lambdas must hold at least one"):
        r.is_symmetric(not_symmetric, lambdas=())
    with pytest.raises(ValueError, match="lambdas must be finite numbers > 0, got -1.0"):
        r.is_symmetric(not_symmetric, lambdas=(-1.0,))
    assert not r.is_symmetric(not_symmetric, trials=1)[0]
    m = Mirror.coordinates([0], 2)
    with pytest.raises(ValueError, match=r"loss must return a scalar .*shape \(2,\)"):
        m.is_symmetric(lambda x: x)
    with pytest.raises(ValueError, match=r"loss must return a scalar .*shape \(13,\)"):
        r.is_symmetric(lambda x: x)
    with pytest.raises(TypeError, match="loss must return a scalar .*got str"):
        m.is_symmetric(lambda x: "0")
    assert m.is_symmetric(lambda x: float(x[1]))[0]  # a Python number is a scalar too


def test_dcs_needs_a_floating_dtype():
    m = Mirror.coordinates([0, 1], 3)
    msg = r"dtype must be a floating torch.dtype .*got torch.int64"
    with pytest.raises(TypeError, match=msg):
        GroupGateDCS([0, 1], dtype=torch.int64)
    with pytest.raises(TypeError, match=msg):
        DCS(m, dtype=torch.int64)
    with pytest.raises(TypeError, match=msg):
        LowRankDCS(2, 2, 1, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        DCS(m, dtype=torch.complex128)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        LowRankDCS(2, 2, 1, dtype="float64")
    for scale in (math.nan, -0.1):
        with pytest.raises(ValueError, match="init_scale must be a finite number >= 0"):
            DCS(m, init_scale=scale)
        with pytest.raises(ValueError, match="init_scale must be a finite number >= 0"):
            LowRankDCS(2, 2, 1, init_scale=scale)
    with pytest.raises(ValueError, match="init contains NaN or inf"):
        DCS(m, init=torch.tensor([0.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="init contains NaN or inf"):
        GroupGateDCS([0, 1], init=torch.tensor([0.0, math.inf]))
    with pytest.raises(TypeError, match="groups must hold non-negative ints, got dtype torch.bool"):
        GroupGateDCS([True, False])
    for bad in ("ab", None, [[0], [1, 2]]):  # raised torch's own errors, not naming groups
        with pytest.raises(TypeError, match="groups must be a 1-D tensor or sequence"):
            GroupGateDCS(bad)
    for bad in ([[1.0, 2.0], [3.0, 4.0]], torch.ones(3, 4, 5)):  # were flattened silently
        with pytest.raises(ValueError, match="curvatures must be a 1-D .* got shape"):
            noise_lyapunov(bad, eta=0.1, gamma=0.0)
    assert GroupGateDCS([0, 1], dtype=torch.float32)().dtype == torch.float32


def test_sample_curvatures_data_and_flat_loss_theta_named():
    m = Mirror.coordinates([0], 2)
    th = torch.zeros(2, dtype=F64)

    def loss(t, x):
        return (t * t).sum() * x.mean()

    with pytest.raises(ValueError, match=r"data\[0\] must have a leading sample dimension"):
        sample_curvatures(loss, th, m, [torch.tensor(1.0)], 1, 1)
    with pytest.raises(TypeError, match=r"data\[0\] must be a torch.Tensor, got list"):
        sample_curvatures(loss, th, m, [[1, 2, 3]], 1, 1)
    with pytest.raises(ValueError, match="data: all tensors must share their first dimension"):
        sample_curvatures(loss, th, m, [torch.ones(3), torch.ones(2)], 1, 1)
    with pytest.raises(ValueError, match="direction must be a finite real vector"):
        sample_curvatures(loss, th, m, [torch.ones(3)], 1, 1, direction=torch.tensor([math.nan]))
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    f = detect.flat_loss(model, nn.functional.mse_loss, torch.zeros(4, 2), torch.zeros(4, 1))
    with pytest.raises(TypeError, match="theta must be a floating tensor, got dtype torch.int64"):
        f(torch.zeros(13, dtype=torch.long))
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor, got list"):
        detect.flat_loss(model, nn.functional.mse_loss, [[0.0, 0.0]], torch.zeros(1, 1))


# ---------------------------------------------------------------- scalar forms (audit 2)
def test_numpy_and_tensor_scalars_accepted_like_python_ones():
    """NumPy integers / floats and 0-d tensors are valid ints / reals everywhere (the result
    equals the plain-int / float call); bools and floats-for-ints are still rejected."""
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    x, y = _data(2, 1, N=8)
    loss = detect.flat_loss(model, nn.functional.mse_loss, x, y)
    r = detect.rescaling_symmetries(model)[0]
    ref = r.is_symmetric(loss, trials=2, rtol=1e-8, generator=gen(0))
    assert r.is_symmetric(loss, trials=np.int64(2), rtol=np.float32(1e-8), generator=gen(0)) == ref
    assert r.is_symmetric(loss, trials=torch.tensor(2), generator=gen(0)) == ref
    assert len(detect.rescaling_symmetries(model, loss, trials=np.int64(1))) == 3
    theta = torch.randn(r.d, generator=gen(1), dtype=F64)
    assert torch.equal(r.apply(theta, np.float32(2.0)), r.apply(theta, 2.0))
    m = Mirror.coordinates([0, 1], 4)
    sq = lambda t: t.pow(2).sum()  # noqa: E731
    assert m.is_symmetric(sq, trials=np.int64(2), rtol=np.float32(1e-6)) == (True, 0.0)
    O = torch.tensor([[0.6], [0.8]], dtype=F64)
    for tol in (np.float32(1e-6), torch.tensor(1e-6), np.float64(1e-6)):
        assert torch.equal(Mirror.dense(O, tol=tol).to_dense(), O)
    m1 = Mirror(torch.tensor([[0]]), torch.tensor([[1.0]]), np.int64(3), tol=np.float32(1e-6))
    assert m1.d == 3 and isinstance(m1.d, int)
    n = torch.tensor([1.0, 0.0], dtype=F64)
    for d in (np.int64(4), torch.tensor(4)):
        assert Mirror.coordinates([0], d).d == 4
        assert Mirror.rescaling_pairs([0], [1], d).d == 4
        assert Mirror.neuron_swap([0], [1], d).d == 4
        assert Mirror.householder(n, [(0, (2, 2), 1)], d).d == 4
    with pytest.raises(ValueError, match="d must be .*got 2.0"):
        Mirror.coordinates([0], 2.0)
    with pytest.raises(ValueError, match="d must be .*got True"):
        Mirror.coordinates([0], True)
    th = torch.ones(4, dtype=F64)
    lam = projected_hessian_eigs(sq, th, m, tol=1e-8, generator=gen(5)).lambda_min
    lam32 = projected_hessian_eigs(sq, th, m, tol=np.float32(1e-8), generator=gen(5)).lambda_min
    assert lam32 == lam
    g1 = critical_decay(sq, th, m, np.int64(2), generator=gen(6))
    assert g1 == critical_decay(sq, th, m, 2, generator=gen(6))
    with pytest.raises(ValueError, match="iters must be .*got 2.0"):
        critical_decay(sq, th, m, 2.0)
    data = [torch.arange(5.0, dtype=F64)]

    def bloss(t, x):
        return (t * t).sum() * x.mean()

    h = sample_curvatures(bloss, th, m, data, 2, 3, generator=gen(2))
    h2 = sample_curvatures(bloss, th, m, data, np.int64(2), torch.tensor(3), generator=gen(2))
    assert torch.equal(h, h2)
    with pytest.raises(ValueError, match="batch_size must be .*got True"):
        sample_curvatures(bloss, th, m, data, True, 1)
    lyap = noise_lyapunov([1.0, 2.0], 0.25, 0.5)
    assert noise_lyapunov([1.0, 2.0], np.float64(0.25), np.float32(0.5)) == lyap
    assert noise_lyapunov([1.0, 2.0], torch.tensor(0.25), np.float32(0.5)) == lyap
    with pytest.raises(ValueError, match="eta must be a finite number > 0"):
        noise_lyapunov([1.0], True, 0.1)
    a = DCS(m, 0.5, init_scale=0.1, generator=gen(3))
    b = DCS(m, np.float32(0.5), init_scale=np.float32(0.1), generator=gen(3))
    c = DCS(m, torch.tensor(0.5), init_scale=torch.tensor(0.1, dtype=F64), generator=gen(3))
    assert b.gamma == 0.5 and c.gamma == 0.5
    assert torch.equal(a(), c()) and torch.allclose(a(), b(), rtol=1e-6)
    lr = LowRankDCS(2, 3, 1, init_scale=0.25, generator=gen(4))
    lr2 = LowRankDCS(np.int64(2), torch.tensor(3), np.int32(1), init_scale=np.float64(0.25),
                     generator=gen(4))  # fmt: skip
    assert torch.equal(lr(), lr2())
    for bad in (2.0, True, "2"):
        with pytest.raises(ValueError, match="m must be"):
            LowRankDCS(bad, 2, 1)
    with pytest.raises(ValueError, match="init_scale must be a finite number >= 0"):
        DCS(m, init_scale=True)


def test_index_constructors_accept_any_integer_numpy_dtype():
    for dt in (np.uint64, np.uint32, np.uint16, np.uint8, np.int8, np.int16, np.int32):
        got = Mirror.coordinates(np.array([2, 0], dtype=dt), 3)
        assert got.index.reshape(-1).tolist() == [2, 0]
        assert Mirror.coordinates([dt(2), dt(0)], 3).index.reshape(-1).tolist() == [2, 0]
    ref = Mirror.rescaling_pairs([0, 2], [1, 3], 4).to_dense()
    got = Mirror.rescaling_pairs(np.array([0, 2], dtype=np.uint64), [np.uint64(1), 3], 4)
    assert torch.equal(got.to_dense(), ref)
    ref = Mirror.neuron_swap([0, 2], [1, 3], 4).to_dense()
    got = Mirror.neuron_swap([np.uint64(0), np.uint64(2)], np.array([1, 3], dtype=np.uint64), 4)
    assert torch.equal(got.to_dense(), ref)
    got = Mirror.coordinates(torch.tensor([2, 0], dtype=torch.uint32), 3)
    assert got.index.reshape(-1).tolist() == [2, 0]
    for bad in (np.array([2**63], dtype=np.uint64), [np.uint64(2**64 - 1)], [2**70]):
        with pytest.raises(ValueError, match="idx has values beyond the int64 range"):
            Mirror.coordinates(bad, 3)
    with pytest.raises(TypeError, match="idx must be a sequence of integers"):
        Mirror.coordinates([np.uint64(1), 0.5], 3)


def test_loss_may_return_a_numpy_scalar_or_size1_array():
    m = Mirror.coordinates([0], 2)
    ref = m.is_symmetric(lambda t: t[1] ** 2 + t[0], generator=gen(0))
    for wrap in (np.array, lambda v: np.array([v], dtype=np.float32), np.float32, np.float64):
        got = m.is_symmetric(lambda t, w=wrap: w(float(t[1] ** 2 + t[0])), generator=gen(0))
        assert got[0] == ref[0] and got[1] == pytest.approx(ref[1], rel=1e-6)
    r = detect.Rescaling(2, torch.tensor([0]), torch.tensor([1]))
    assert r.is_symmetric(lambda t: np.array(float(t[0] * t[1])))[0]
    with pytest.raises(ValueError, match=r"loss must return a scalar .*shape \(2,\)"):
        m.is_symmetric(lambda t: np.ones(2))
    with pytest.raises(ValueError, match="loss must return a scalar .*dtype bool"):
        m.is_symmetric(lambda t: np.array(True))


def test_permutation_max_pairs_validated():
    mlp = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    assert len(detect.permutation_mirrors(mlp)) == 6
    assert len(detect.permutation_mirrors(mlp, max_pairs=None)) == 6
    assert len(detect.permutation_mirrors(mlp, max_pairs=0)) == 0
    two = detect.permutation_mirrors(mlp, max_pairs=2)
    assert [m.meta["neurons"] for m in two] == [(0, 1), (0, 2)]
    for v in (np.int64(2), torch.tensor(2)):
        assert [m.meta["neurons"] for m in detect.permutation_mirrors(mlp, max_pairs=v)] == [
            (0, 1),
            (0, 2),
        ]
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="max_pairs must be .*int"):
            detect.permutation_mirrors(mlp, max_pairs=bad)
    with pytest.raises(ValueError, match="max_pairs must be"):
        detect.find_mirrors(mlp, max_pairs=-1)


def test_noise_lyapunov_curvatures_and_critical_decay_loss_named():
    for bad in ("ab", ["a", "b"], [[1.0], [1.0, 2.0]], [1 + 2j], torch.tensor([True])):
        with pytest.raises(TypeError, match="curvatures must be a 1-D tensor or sequence of real"):
            noise_lyapunov(bad, 0.1, 0.1)
    # lists are read in float64 (not rounded through float32)
    h = [0.1, 0.3]
    want = float(np.mean(np.log(np.abs(1 - 0.5 * (np.array(h) + 0.2)))))
    assert noise_lyapunov(h, 0.5, 0.1) == pytest.approx(want, rel=1e-15)
    assert noise_lyapunov(np.array(h), 0.5, 0.1) == noise_lyapunov(h, 0.5, 0.1)
    assert noise_lyapunov(torch.tensor(h, dtype=F64), 0.5, 0.1) == noise_lyapunov(h, 0.5, 0.1)
    m = Mirror.coordinates([0, 1], 4)
    th = torch.ones(4, dtype=F64)
    msg = "loss must be differentiable in theta"
    with pytest.raises(ValueError, match=msg):
        critical_decay(lambda t: t.detach().pow(2).sum(), th, m)
    with pytest.raises(ValueError, match=msg):
        critical_decay(lambda t: torch.tensor(t.detach().pow(2).sum().item(), dtype=F64), th, m)
    with pytest.raises(ValueError, match=msg):
        sample_curvatures(lambda t, x: t.detach().sum() * x.mean(), th, m, [torch.ones(3)], 1, 1)
    # a linear loss is differentiable with a zero Hessian: γ* = 0 (it used to crash)
    assert critical_decay(lambda t: t.sum(), th, m) == 0.0


def test_householder_float32_unit_normal_accepted():
    """n passes its unit check at its own precision, then is renormalised in float64: a float32
    (or float16) unit vector builds the same mirror as its float64 normalisation."""
    n32 = torch.tensor([0.6, 0.8])
    blocks = [(0, (2, 2), 1)]
    m = Mirror.householder(n32, blocks, 6)
    n64 = n32.double() / n32.double().norm()
    ref = Mirror.householder(n64, blocks, 6)
    assert_close(m.to_dense(), ref.to_dense(), atol=1e-15, rtol=0)
    O = m.to_dense()
    assert_close(O.T @ O, torch.eye(m.k, dtype=F64), atol=1e-14, rtol=0)
    assert Mirror.householder(n32.half(), blocks, 6).k == 2
    with pytest.raises(ValueError, match="n must be a unit vector"):
        Mirror.householder(torch.tensor([0.6, 0.81]), blocks, 6)


def test_rescaling_apply_needs_floating_theta():
    r = detect.Rescaling(3, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(TypeError, match="theta must be a floating tensor, got dtype torch.int64"):
        r.apply(torch.ones(3, dtype=torch.long), 2.5)
    for bad in (True, 0.0, math.nan, "2"):
        with pytest.raises(ValueError, match="lam must be a finite number > 0"):
            r.apply(torch.ones(3, dtype=F64), bad)
    assert r.is_symmetric(lambda t: (t[0] * t[1]) ** 2, lambdas=np.array([0.5, 3.0]))[0]
    with pytest.raises(TypeError, match="lambdas must be a sequence"):
        r.is_symmetric(lambda t: t.sum(), lambdas=2.0)


def test_constructor_checks_a_dense_o_as_the_dense_classmethod_does():
    """Mirror(None, None, d, dense=O) took O unchecked even with check=True: a non-orthonormal O
    made reflect no involution (R(R(1)) = 25 for O = ones(3, 1)), and a d mismatch failed later
    inside a kernel."""
    not_orthonormal = r"dense must have orthonormal columns: max\|OᵀO − I\| = 2"
    with pytest.raises(ValueError, match=not_orthonormal):
        Mirror(None, None, 3, dense=torch.ones(3, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"dense must have d=5 rows, got shape \(3, 1\)"):
        Mirror(None, None, 5, dense=torch.eye(3, dtype=F64)[:, :1])
    with pytest.raises(TypeError, match="dense must be a torch.Tensor, got list"):
        Mirror(None, None, 2, dense=[[1.0], [0.0]])
    with pytest.raises(ValueError, match="dense contains non-finite values"):
        Mirror(None, None, 2, dense=torch.tensor([[math.nan], [1.0]], dtype=F64))
    with pytest.raises(TypeError, match=r"index must be a \(k, s\) torch.Tensor, got list"):
        Mirror([[0]], [[1.0]], 3)  # was AttributeError: 'list' object has no attribute 'ndim'
    q = torch.linalg.qr(torch.randn(5, 2, generator=gen(1), dtype=F64))[0]
    m = Mirror(None, None, 5, dense=q)
    theta = torch.randn(5, generator=gen(2), dtype=F64)
    assert_close(m.reflect(m.reflect(theta)), theta, atol=1e-14, rtol=0)
    # check=False is the classmethods' way in after their own check: shape checks still run
    assert Mirror(None, None, 3, dense=torch.ones(3, 1), check=False).k == 1
    with pytest.raises(ValueError, match="dense must have d=4 rows"):
        Mirror(None, None, 4, dense=torch.ones(3, 1), check=False)


def test_group_ids_are_bounded_and_unsigned_ids_work():
    """Group ids index one gate / one norm per id up to the largest: ids of 10**12 were
    accepted until an allocation of terabytes, and unsigned integer ids (valid ints) raised
    NotImplementedError from torch."""
    theta0 = torch.tensor([3.0, 4.0, 1.0], dtype=F64)
    want = GroupGateDCS([0, 0, 1], init=theta0)
    for ids in (
        np.array([0, 0, 1], dtype=np.uint32),
        np.array([0, 0, 1], dtype=np.uint64),
        torch.tensor([0, 0, 1], dtype=torch.uint32),
    ):
        got = GroupGateDCS(ids, init=theta0)
        assert torch.equal(got.groups, want.groups) and torch.equal(got.s, want.s)
    with pytest.raises(ValueError, match=r"groups must lie in \[0, d\) with d = 2 coordinates"):
        GroupGateDCS([0, 10**12])
    with pytest.raises(ValueError, match=r"groups must lie in \[0, k\) with k = 2 columns"):
        Mirror.coordinates([0, 1], 3, groups=[0, 10**15])
    m = Mirror.coordinates([0, 2], 3, groups=[1, 1])  # ids below k, group 0 empty: fine
    assert m.group_norms(torch.ones(3, dtype=F64)).tolist() == [0.0, math.sqrt(2)]


@pytest.mark.parametrize("bad", [5, "seed", np.random.default_rng(0)], ids=["int", "str", "numpy"])
def test_generator_must_be_a_torch_generator_or_none(bad):
    """generator=5 (or a NumPy Generator) surfaced torch's randn / randperm overload listing, or
    passed silently where nothing was drawn (is_symmetric at a given θ with trials=1, detection
    without a loss): a TypeError naming generator in every function that takes one."""
    m = Mirror.rescaling_pairs([0], [1], 2)
    loss = lambda t: (t[0] * t[1] - 2.0) ** 2  # noqa: E731
    theta = torch.tensor([0.3, -0.7], dtype=F64)
    model = nn.Sequential(nn.Linear(2, 3), nn.Identity(), nn.Linear(3, 1)).double()
    y = torch.arange(4, dtype=F64)
    calls = [
        lambda: m.is_symmetric(loss, theta, trials=1, generator=bad),
        lambda: DCS(m, generator=bad),
        lambda: GroupGateDCS([0, 0, 1], generator=bad),
        lambda: LowRankDCS(2, 2, 1, generator=bad),
        lambda: projected_hessian_eigs(loss, theta, m, generator=bad),
        lambda: critical_decay(loss, theta, m, generator=bad),
        lambda: sample_curvatures(
            lambda t, b: loss(t) * b.mean(), theta, m, [y], 2, 1, generator=bad
        ),
        lambda: detect.find_mirrors(model, generator=bad),  # no loss: nothing drawn
        lambda: detect.rotation_mirrors(model, loss=None, generator=bad),
        lambda: detect.Rescaling(2, torch.tensor([0]), torch.tensor([1])).is_symmetric(
            loss, generator=bad
        ),
    ]
    want = f"generator must be a torch.Generator or None, got {type(bad).__name__}"
    for call in calls:
        with pytest.raises(TypeError, match=want):
            call()


def test_meta_tensors_propagate_shapes_or_are_refused_naming_the_argument():
    """A meta tensor (a shape and dtype, no values) raised torch's "Tensor.item() cannot be
    called on meta tensors" / "Cannot copy out of meta tensor" from a validation check. The
    mirror ops propagate its shape (as orbit_average and project_fixed do), and so do DCS
    modules built from a meta init; what needs the values — building O from them, a symmetry
    check, the thresholds, the sweep — refuses it naming the argument."""

    def meta(*shape, dtype=F64):
        return torch.empty(*shape, dtype=dtype, device="meta")

    for kind in KINDS:
        m = make_mirror(kind, 7)
        for out in (m.reflect(meta(5, 7)), m.project(meta(5, 7)), m.expand(meta(5, m.k))):
            assert out.shape == (5, 7) and out.is_meta
        c, norm = m.breaking(meta(5, 7))
        assert c.shape == (5, m.k) and norm.shape == (5,) and c.is_meta
    for module in (DCS.l1(3, init=meta(3)), GroupGateDCS([0, 0, 1], init=meta(3))):
        assert module().shape == (3,) and module().is_meta and module.penalty().is_meta
    idx = meta(2, dtype=torch.long)
    m = Mirror.rescaling_pairs([0], [1], 2)
    loss = lambda t: (t[0] * t[1] - 2.0) ** 2  # noqa: E731
    batch_loss = lambda t, b: loss(t) * b.mean()  # noqa: E731
    y, u = torch.arange(4, dtype=F64), torch.ones(1, 3, dtype=F64)

    def sweep(params=None, gammas=0.1, target=None):
        params = {"u": u, "w": u} if params is None else params
        return train_sweep("rescaling", params, gammas, 0.1, 2, None, target=target)

    refused = [
        ("O", lambda: Mirror.dense(meta(3, 1))),
        ("idx", lambda: Mirror.coordinates(idx, 4)),
        ("u_idx", lambda: Mirror.rescaling_pairs(idx, [2, 3], 4)),
        ("block_i", lambda: Mirror.neuron_swap(idx, [2, 3], 4)),
        ("n", lambda: Mirror.householder(meta(2), [(0, (2, 2), 1)], 4)),
        ("index", lambda: Mirror(idx[:, None], torch.ones(2, 1, dtype=F64), 4)),
        ("dense", lambda: Mirror(None, None, 3, dense=meta(3, 1))),
        ("groups", lambda: Mirror.coordinates([0, 1], 4, groups=idx)),
        ("groups", lambda: GroupGateDCS(idx)),
        ("theta", lambda: m.is_symmetric(loss, meta(2))),
        ("theta", lambda: critical_decay(loss, meta(2), m)),
        ("theta", lambda: sample_curvatures(batch_loss, meta(2), m, [y], 2, 1)),
        ("data[0]", lambda: sample_curvatures(batch_loss, y[:2], m, [meta(4)], 2, 1)),
        (
            "direction",
            lambda: sample_curvatures(batch_loss, y[:2], m, [y], 2, 1, direction=meta(2)),
        ),
        ("curvatures", lambda: noise_lyapunov(meta(4), 0.1, 0.1)),
        ("beta", lambda: closed_form_sparsity(meta(4), 0.1)),
        ("params['u']", lambda: sweep({"u": meta(1, 3), "w": meta(1, 3)}, target=u[0])),
        ("target (beta)", lambda: sweep(target=meta(3))),
        ("gammas", lambda: sweep(gammas=meta(1), target=u[0])),
    ]
    for name, call in refused:
        with pytest.raises(
            ValueError, match="^" + re.escape(f"{name} must hold values, got a meta")
        ):
            call()


# ---------------------------------------------------------------- Theorem 1(2)-(4)
# Notation: θ = θ_∥ + O c with c = Oᵀθ, θ_∥ = (I − OOᵀ)θ; ℓ_γ = ℓ + γ‖θ‖² (SPEC convention).


def _mlp_loss(t, X, Y, h, shift=None):
    """Flat loss of Sequential(Linear(din, h), Tanh, Linear(h, dout)) in parameters_to_vector
    order (W₁, b₁, W₂, b₂); ``shift`` (h,) fixed, added inside the tanh: breaks the sign flip and,
    when its entries differ, the neuron swaps."""
    din, dout = X.shape[1], Y.shape[1]
    W1 = t[: h * din].view(h, din)
    b1 = t[h * din : h * din + h]
    o = h * din + h
    W2 = t[o : o + dout * h].view(dout, h)
    b2 = t[o + dout * h :]
    z = X @ W1.T + b1
    if shift is not None:
        z = z + shift
    return ((torch.tanh(z) @ W2.T + b2 - Y) ** 2).mean()


def _rescaling_data():
    """X (23, 5) non-whitened, y = Xβ + noise."""
    g = gen(30)
    X = torch.randn(23, 5, generator=g, dtype=F64)
    y = X @ torch.tensor([1.3, -0.7, 0.4, 0.0, 2.1], dtype=F64)
    return X, y + 0.3 * torch.randn(23, generator=g, dtype=F64)


def _factor_A():
    """A (5, 4) with singular values 3, 1.7, 0.6, 0.25."""
    g = gen(32)
    Uq, _ = torch.linalg.qr(torch.randn(5, 4, generator=g, dtype=F64))
    Vq, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    return Uq @ torch.diag(torch.tensor([3.0, 1.7, 0.6, 0.25], dtype=F64)) @ Vq.T


def _theorem_case(kind):
    """(loss, broken loss, mirror, non-symmetric O, d) for one mirror kind on a model of the
    paper. ``broken`` is the same model with the mirror broken (a fixed bias / shift / scale);
    ``wrong`` a mirror of the same kind that is not a symmetry of ``loss``."""
    g = gen(31)
    if kind == "rescaling_pairs":  # θ = (u, w), regression on u ⊙ w
        X, y = _rescaling_data()
        p = X.shape[1]
        b = torch.randn(p, generator=g, dtype=F64)

        def loss(t):
            return ((X @ (t[:p] * t[p:]) - y) ** 2).mean()

        def broken(t):  # fixed bias on u: (u + b) ⊙ w, no (u, w) → (−u, −w) mirror
            return ((X @ ((t[:p] + b) * t[p:]) - y) ** 2).mean()

        m = Mirror.rescaling_pairs([1, 4], [p + 1, p + 4], 2 * p)
        wrong = Mirror.coordinates([1], 2 * p)  # u_1 alone flips the sign of θ_1
        return loss, broken, m, wrong, 2 * p
    if kind in ("coordinates", "neuron_swap"):  # 2-layer tanh network
        torch.manual_seed(3)
        h = 5
        model = nn.Sequential(nn.Linear(3, h), nn.Tanh(), nn.Linear(h, 2)).double()
        X = torch.randn(17, 3, generator=g, dtype=F64)
        Y = torch.randn(17, 2, generator=g, dtype=F64)
        loss = detect.flat_loss(model, nn.functional.mse_loss, X, Y)
        d = detect._dim(model)
        shift = 0.5 * torch.randn(h, generator=g, dtype=F64)
        th = torch.randn(d, generator=g, dtype=F64)
        assert_close(loss(th), _mlp_loss(th, X, Y, h), rtol=1e-13, atol=0)
        W1 = torch.arange(3 * h).view(h, 3)
        W2 = 4 * h + torch.arange(2 * h).view(2, h)
        if kind == "coordinates":  # sign flip of neuron 2 (tanh is odd)
            m = detect.sign_flip_mirrors(model, loss, generator=gen(1))[2]
            wrong = Mirror.coordinates(torch.cat([W1[2], W2[:, 1]]), d)  # mixes two neurons
        else:  # swap of neurons 1 and 3
            m = detect.permutation_mirrors(model, loss, generator=gen(1))[5]
            assert m.meta["neurons"] == (1, 3)
            wrong = Mirror.neuron_swap(W1[1], W1[3], d)  # incoming weights only
        return loss, lambda t: _mlp_loss(t, X, Y, h, shift), m, wrong, d
    if kind == "householder":  # factorisation U Wᵀ, U (5, 3), W (4, 3)
        mU, pW, r = 5, 4, 3
        A = _factor_A()
        D = torch.tensor([1.0, 1.6, 0.5], dtype=F64)

        def split(t):
            return t[: mU * r].view(mU, r), t[mU * r :].view(pW, r)

        def loss(t):
            U, W = split(t)
            return ((U @ W.T - A) ** 2).sum()

        def broken(t):  # U D Wᵀ with D anisotropic: no rotation of the hidden index
            U, W = split(t)
            return ((U @ torch.diag(D) @ W.T - A) ** 2).sum()

        n = torch.randn(r, generator=g, dtype=F64)
        n = n / n.norm()
        m = Mirror.householder(n, [(0, (mU, r), 1), (mU * r, (pW, r), 1)], mU * r + pW * r)
        wrong = Mirror.householder(n, [(0, (mU, r), 1)], mU * r + pW * r)  # U reflected only
        return loss, broken, m, wrong, mU * r + pW * r
    if kind == "rotation_detected":  # Linear → Linear, mirror found by detect
        torch.manual_seed(4)
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
        X = torch.randn(19, 3, generator=g, dtype=F64)
        Y = torch.randn(19, 2, generator=g, dtype=F64)
        loss = detect.flat_loss(model, nn.functional.mse_loss, X, Y)
        (m,) = detect.rotation_mirrors(model, loss, generator=gen(2))
        nonlinear = nn.Sequential(model[0], nn.Tanh(), model[1])  # tanh breaks the rotation
        broken = detect.flat_loss(nonlinear, nn.functional.mse_loss, X, Y)
        wrong = detect.hidden_index_mirror(model, [(model[0].weight, 0)], m.meta["n"])
        return loss, broken, m, wrong, m.d
    if kind == "dense":  # any loss symmetrised over a dense O: ½(L(θ) + L(R_O θ))
        d, k = 7, 2
        Q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))
        C = torch.randn(9, d, generator=g, dtype=F64)
        z = torch.randn(9, generator=g, dtype=F64)
        a = torch.randn(d, generator=g, dtype=F64)

        def L(t):
            return ((torch.tanh(C @ t) - z) ** 2).sum() + (a @ t) ** 3 / 10

        def loss(t):
            return 0.5 * (L(t) + L(t - 2 * Q @ (Q.T @ t)))

        Q2, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))
        return loss, L, Mirror.dense(Q), Mirror.dense(Q2), d
    raise AssertionError(kind)


THEOREM_KINDS = ["rescaling_pairs", "coordinates", "neuron_swap", "householder",
                 "rotation_detected", "dense"]  # fmt: skip


def _cross_block(loss, m, theta, gamma):
    """‖(I − OOᵀ) ∇²ℓ_γ(θ) O‖ / ‖∇²ℓ_γ(θ)‖ and ‖Oᵀ∇²ℓ_γ O‖ / ‖∇²ℓ_γ‖ (dense Hessian)."""
    H = torch.autograd.functional.hessian(
        lambda t: loss(t) + gamma * t.pow(2).sum(), theta, vectorize=True
    )
    O = m.to_dense()
    P = torch.eye(m.d, dtype=F64) - O @ O.T
    nH = H.norm().item()
    return (P @ H @ O).norm().item() / nH, (O.T @ H @ O).norm().item() / nH


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
@pytest.mark.parametrize("kind", THEOREM_KINDS)
def test_theorem1_2_hessian_block_diagonal_on_constraint(kind):
    """Theorem 1(2). ℓ(θ) = ℓ(R_O θ) with R_O = I − 2OOᵀ; differentiating twice,
    ∇²ℓ(θ) = R_O ∇²ℓ(R_O θ) R_O. At Oᵀθ = 0, R_O θ = θ, so H = R H R: with P = I − OOᵀ,
    R = P − OOᵀ, and the cross block P H O = −P H O vanishes. In the split θ = θ_∥ + O c the
    Hessian of ℓ_γ (decay adds 2γI) is block-diagonal: blocks PHP and OᵀHO only.

    Can fail: at the same kind of point for the model with the mirror broken (fixed bias, shift,
    anisotropic scale, or no symmetrisation), for a mirror of the same kind that is not a symmetry
    (its own constraint point), and for the true mirror off the constraint (Oᵀθ ≠ 0)."""
    loss, broken, m, wrong, d = _theorem_case(kind)
    gamma = 0.3
    assert m.is_symmetric(loss, trials=2, generator=gen(5))[0]
    assert not m.is_symmetric(broken, trials=2, generator=gen(5))[0]
    assert not wrong.is_symmetric(loss, trials=2, generator=gen(5))[0]
    for seed in (6, 7):
        theta = torch.randn(d, generator=gen(seed), dtype=F64)
        on = m.project(theta)
        assert m.breaking(on)[1].item() < 1e-14 * theta.norm().item()
        assert m.coefficients(torch.func.grad(loss)(on)).abs().max() < 1e-12  # 1(1) too
        cross, diag = _cross_block(loss, m, on, gamma)
        assert cross < 1e-12, (kind, cross)
        assert diag > 1e-3  # the span(O) block itself is not trivial
        # premises broken: each makes the cross block O(1)
        assert _cross_block(broken, m, on, gamma)[0] > 1e-3
        assert _cross_block(loss, wrong, wrong.project(theta), gamma)[0] > 1e-3
        off = on + m.expand(torch.randn(m.k, generator=gen(seed + 10), dtype=F64))
        assert _cross_block(loss, m, off, gamma)[0] > 1e-3


def _gap(loss, m, theta, gamma):
    """ℓ_γ(θ) − ℓ_γ((I − OOᵀ)θ) = ℓ(θ) − ℓ(θ_∥) + γ‖Oᵀθ‖²: > 0 iff projecting lowers ℓ_γ."""
    with torch.no_grad():
        drop = (loss(theta) - loss(m.project(theta))).item()
        return drop + gamma * m.coefficients(theta).pow(2).sum().item()


def _probes(loss, m, on, g, scales=(1e-3, 3e-2, 0.3, 1.0, 3.0, 30.0), n_random=5):
    """Points θ_∥ + ε O v, both signs, v: random unit vectors of R^k, the λ_min eigenvector of
    Oᵀ∇²ℓ(θ_∥)O and the descent direction −Oᵀ∇ℓ(θ_∥) (0 for a symmetric loss, by 1(1))."""
    O = m.to_dense()
    H = torch.autograd.functional.hessian(loss, on, vectorize=True)
    vs = [torch.linalg.eigh(O.T @ H @ O).eigenvectors[:, 0]]
    gc = m.coefficients(torch.func.grad(loss)(on))
    if gc.norm() > 1e-12:
        vs.append(-gc / gc.norm())
    vs += list(nn.functional.normalize(torch.randn(n_random, m.k, generator=g, dtype=F64), dim=1))
    return [on + s * eps * m.expand(v) for v in vs for eps in scales for s in (1.0, -1.0)]


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_3_projection_rescaling_regression_exact_threshold():
    """Theorem 1(3), θ = u ⊙ w regression ℓ = mean (xᵀ(u ⊙ w) − y)², per-pair mirror
    O = [e_{u_j}, e_{w_j}] (:meth:`Mirror.rescaling_pairs`). With r = X(u ⊙ w)_∥ − y the residual
    at θ_∥ (pair j zeroed), ℓ(θ) − ℓ(θ_∥) = 2 u_j w_j x_jᵀr/N + u_j² w_j² ‖x_j‖²/N
    ≥ −|x_jᵀr/N| (u_j² + w_j²), so
        ℓ_γ(θ) − ℓ_γ(θ_∥) ≥ (γ − γ*) ‖c‖²,  γ* = |x_jᵀ r| / N,
    for every c on the fibre θ_∥ + span(O) (no smallness): γ > γ* ⇒ projecting lowers ℓ_γ.
    γ* equals the local threshold −½ λ_min(Oᵀ∇²ℓ(θ_∥)O) of :func:`critical_decay` (the block is
    [[0, 2x_jᵀr/N], [2x_jᵀr/N, 0]]), so the bound is sharp: for γ < γ*, c = ε(1, −sign x_jᵀr)
    gives ℓ_γ(θ) − ℓ_γ(θ_∥) = 2ε²(γ − γ*) + O(ε⁴) < 0. All pairs at once (O = all pairs,
    θ_∥ = 0): ℓ(θ) − ℓ(0) ≥ −2 gᵀ(u ⊙ w) ≥ −max|g| ‖θ‖², g = Xᵀy/N: the threshold is max_j |g_j|.

    Can fail: with a fixed bias, (u + b) ⊙ w, and with the non-symmetric O = e_{u_j}, ℓ has a
    term linear in c, and projecting raises ℓ_γ near θ_∥ for any γ (here 100 γ*)."""
    loss, broken, _, wrong, d = _theorem_case("rescaling_pairs")
    p = d // 2
    whole = Mirror.rescaling_pairs(range(p), range(p, d), d)
    g = gen(40)
    for j, m in enumerate(whole.split()):
        theta = torch.randn(d, generator=g, dtype=F64)
        on = m.project(theta)
        gstar = critical_decay(loss, theta, m, generator=gen(41))
        X, y = _rescaling_data()
        r = X @ (on[:p] * on[p:]) - y
        assert gstar == pytest.approx(abs(X[:, j] @ r).item() / X.shape[0], rel=1e-10)
        probes = _probes(loss, m, on, g)
        assert min(_gap(loss, m, t, gstar * (1 + 1e-3) + 1e-9) for t in probes) > 0
        assert min(_gap(loss, m, t, 0.98 * gstar) for t in probes) < 0
    # all pairs together, around θ_∥ = 0
    X, y = _rescaling_data()
    G = (X.T @ y / X.shape[0]).abs().max().item()
    assert critical_decay(loss, torch.ones(d, dtype=F64), whole) == pytest.approx(G, rel=1e-10)
    probes = _probes(loss, whole, torch.zeros(d, dtype=F64), g, n_random=20)
    assert min(_gap(loss, whole, t, G * (1 + 1e-3)) for t in probes) > 0
    assert min(_gap(loss, whole, t, 0.98 * G) for t in probes) < 0
    # premises broken: a linear term in c defeats any γ
    on = torch.randn(d, generator=g, dtype=F64)
    m1 = whole.split()[1]
    for lo, mm in ((broken, m1), (loss, wrong)):
        pts = _probes(lo, mm, mm.project(on), g, scales=(1e-4, 1e-3))
        assert min(_gap(lo, mm, t, 100 * G) for t in pts) < 0


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_3_projection_factorisation_householder_exact_threshold():
    """Theorem 1(3), ℓ = ‖U Wᵀ − A‖²_F with the Householder mirror U → U(I − 2nnᵀ),
    W → W(I − 2nnᵀ) (:meth:`Mirror.householder`; Oᵀθ = [U n; W n] =: [a; b]). θ_∥ has
    U_∥ n = W_∥ n = 0, so U Wᵀ = U_∥W_∥ᵀ + a bᵀ and with E = U_∥W_∥ᵀ − A
        ℓ(θ) − ℓ(θ_∥) = 2 aᵀE b + ‖a‖²‖b‖² ≥ −σ₁(E)(‖a‖² + ‖b‖²),
    hence ℓ_γ(θ) − ℓ_γ(θ_∥) ≥ (γ − σ₁(E))‖c‖² for every c: γ > γ* = σ₁(E) ⇒ projecting lowers
    ℓ_γ on the whole fibre. The block Oᵀ∇²ℓ(θ_∥)O = [[0, 2E], [2Eᵀ, 0]] has λ_min = −2σ₁(E),
    so γ* is :func:`critical_decay`'s local threshold and sharp: a = ε u₁, b = −ε v₁ (top
    singular pair of E) gives 2ε²(γ − σ₁(E)) + ε⁴ < 0 for γ < γ*, ε small.

    Can fail: U D Wᵀ with D anisotropic (no rotation symmetry), and the non-symmetric mirror
    that reflects U alone: both leave a term linear in c, so projecting raises ℓ_γ near θ_∥
    even at γ = 100 γ*."""
    loss, broken, _, wrong, d = _theorem_case("householder")
    mU, pW, r = 5, 4, 3
    g = gen(42)
    for seed in (43, 44, 45):
        n = torch.randn(r, generator=gen(seed), dtype=F64)
        n = n / n.norm()
        m = Mirror.householder(n, [(0, (mU, r), 1), (mU * r, (pW, r), 1)], d)
        theta = torch.randn(d, generator=g, dtype=F64)
        on = m.project(theta)
        U, W = on[: mU * r].view(mU, r), on[mU * r :].view(pW, r)
        E = U @ W.T - _factor_A()
        sig = torch.linalg.svdvals(E)[0].item()
        gstar = critical_decay(loss, theta, m, generator=gen(46))
        assert gstar == pytest.approx(sig, rel=1e-10)
        # the identity ℓ(θ) − ℓ(θ_∥) = 2aᵀEb + ‖a‖²‖b‖² on the package's coefficients
        c = m.coefficients(theta)
        a, b = c[:mU], c[mU:]
        assert_close(loss(theta) - loss(on), 2 * a @ E @ b + a.pow(2).sum() * b.pow(2).sum())
        probes = _probes(loss, m, on, g)
        assert min(_gap(loss, m, t, gstar * (1 + 1e-3)) for t in probes) > 0
        assert min(_gap(loss, m, t, 0.98 * gstar) for t in probes) < 0
        for lo, mm in ((broken, m), (loss, wrong)):
            pts = _probes(lo, mm, mm.project(theta), g, scales=(1e-4, 1e-3))
            assert min(_gap(lo, mm, t, 100 * gstar) for t in pts) < 0


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_3_projection_tanh_neuron_sign_global_bound():
    """Theorem 1(3), tanh neuron f(x) = u tanh(w x), ℓ = mean (f − y)², sign mirror
    (u, w) → (−u, −w) (O = I₂, :meth:`Mirror.coordinates`; θ_∥ = 0). Global bound, every θ:
    |tanh z| ≤ |z| gives |mean y tanh(wx)| ≤ |w| mean|xy|, so
        ℓ(θ) − ℓ(0) = mean u² tanh²(wx) − 2u mean y tanh(wx) ≥ −Γ ‖θ‖²,  Γ = mean|xy|,
    and γ > Γ ⇒ ℓ_γ(θ) > ℓ_γ(0) for all θ ≠ 0 (checked on a polar grid from ‖θ‖ = 10⁻³ to 10³).
    The local threshold γ* = |mean xy| (:func:`critical_decay`) ≤ Γ is where 0 stops being a
    local minimum: for γ < γ* projecting raises ℓ_γ near 0 along the unstable direction. The
    exact global threshold on the grid, Γ_ex = sup (ℓ(0) − ℓ(θ))/‖θ‖², lies in [γ*, Γ].

    Can fail: a fixed bias inside the tanh, u tanh(w x + 0.5), has no sign mirror; its
    ∂ℓ/∂u(0) = −2 tanh(0.5) mean y ≠ 0 makes projecting raise ℓ_γ near 0 at γ = 100 Γ."""
    x, y = _tanh_data()

    def loss(t):
        return ((t[..., :1] * torch.tanh(t[..., 1:] * x) - y) ** 2).mean(-1)

    def broken(t):
        return ((t[..., :1] * torch.tanh(t[..., 1:] * x + 0.5) - y) ** 2).mean(-1)

    m = Mirror.coordinates([0, 1], 2)
    G = (x * y).abs().mean().item()
    gstar = critical_decay(loss, torch.tensor([0.3, -0.2], dtype=F64), m)
    assert gstar == pytest.approx((x * y).mean().abs().item(), rel=1e-10) and gstar < G
    rad = torch.logspace(-3, 3, 37, dtype=F64)
    phi = torch.linspace(0, 2 * math.pi, 241, dtype=F64)[:-1]
    pts = (rad[:, None, None] * torch.stack([phi.cos(), phi.sin()], -1)).reshape(-1, 2)
    with torch.no_grad():
        drop = (loss(torch.zeros(2, dtype=F64)) - loss(pts)) / pts.pow(2).sum(-1)
    # ℓ_γ(θ) − ℓ_γ(0) = ‖θ‖² (γ − drop(θ)): > 0 everywhere iff γ > sup drop
    assert drop.max().item() < G  # γ = Γ already works, at every radius
    assert gstar * (1 - 1e-3) < drop.max().item()  # sup drop ≥ γ* (small radii, λ_min direction)
    assert (drop > 0.98 * gstar).any()  # γ just below γ*: projecting raises ℓ_γ somewhere
    assert _gap(loss, m, pts[0], G) > 0
    with torch.no_grad():
        drop_b = (broken(torch.zeros(2, dtype=F64)) - broken(pts)) / pts.pow(2).sum(-1)
    assert drop_b.max().item() > 100 * G


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_3_projection_tanh_mlp_region_bound():
    """Theorem 1(3) for the 2-layer tanh network (neuron swap and sign-flip mirrors found by
    :mod:`detect`), no closed form: a bound over a region. With g(c) = ℓ(θ_∥ + O c), g is even
    (the mirror), so ∇g(0) = 0 and Taylor with integral remainder gives
        ℓ(θ) − ℓ(θ_∥) = ∫₀¹ (1 − t) cᵀ ∇²g(t c) c dt ≥ ½ min_t λ_min(Oᵀ∇²ℓ(θ_∥ + t O c)O) ‖c‖²,
    i.e. the break-even decay γ_be(θ) = (ℓ(θ_∥) − ℓ(θ))/‖c‖² ≤ Γ_seg(θ) := max_t γ*_loc(t),
    γ*_loc = −½ λ_min(Oᵀ∇²ℓ O) (:func:`projected_hessian_eigs` at the point, unprojected).
    Over a ball B_R centred on the constraint (segments stay inside), Γ_R = sup Γ_seg bounds
    every γ_be: γ > Γ_R ⇒ ℓ_γ(θ_∥) < ℓ_γ(θ) on B_R. Checked on sampled θ (Γ_seg on a grid of
    t); sharp up to sampling: below γ*(θ_∥) of the worst sample projecting raises ℓ_γ.

    Can fail: with a fixed, distinct shift per hidden neuron inside the tanh, neither mirror
    is a symmetry; ℓ is then not even in c and γ_be exceeds any such bound near θ_∥."""
    for kind in ("neuron_swap", "coordinates"):
        loss, broken, m, wrong, d = _theorem_case(kind)
        g = gen(47)
        R = 6.0
        worst, gamma_R = None, -math.inf
        ts = torch.linspace(0, 1, 7, dtype=F64)
        thetas = []
        for _ in range(4):
            z = torch.randn(d, generator=g, dtype=F64)
            on = m.project(z)
            on = on / on.norm() * R * 0.8  # ‖θ_∥‖ = 0.8 R
            gs = critical_decay(loss, on, m, generator=gen(48))
            if worst is None or gs > worst[1]:
                worst = (on, gs)
            O = m.to_dense()
            H = torch.autograd.functional.hessian(loss, on, vectorize=True)
            v_min = torch.linalg.eigh(O.T @ H @ O).eigenvectors[:, 0]  # unit, the worst direction
            v = torch.randn(m.k, generator=g, dtype=F64)
            for eps, u in (
                (0.05, v_min),
                (-0.05, v_min),
                (0.6 * R, v_min),
                (0.05, v),
                (-0.6 * R, v),
            ):
                thetas.append(on + eps * m.expand(u / u.norm()))  # ‖θ‖ ≤ R
        for theta in thetas:
            on, c = m.project(theta), m.coefficients(theta)
            lam = [
                projected_hessian_eigs(loss, on + t * m.expand(c), m, project=False,
                                       generator=gen(49)).lambda_min
                for t in ts
            ]  # fmt: skip
            gseg = -0.5 * min(lam)
            gbe = -(loss(theta) - loss(on)).item() / c.pow(2).sum().item()
            assert gbe <= gseg + 1e-9 * abs(gseg), (kind, gbe, gseg)
            gamma_R = max(gamma_R, gseg)
        assert gamma_R > 0
        assert min(_gap(loss, m, t, gamma_R * (1 + 1e-6)) for t in thetas) > 0
        on, gs = worst
        assert gs > 0.1
        probes = _probes(loss, m, on, g, scales=(1e-3, 1e-2))
        assert min(_gap(loss, m, t, gs * (1 + 1e-3)) for t in probes) > 0
        assert min(_gap(loss, m, t, 0.98 * gs) for t in probes) < 0
        # premises broken: the shifted network and the non-symmetric O
        for lo, mm in ((broken, m), (loss, wrong)):
            pts = _probes(lo, mm, mm.project(thetas[0]), g, scales=(1e-4, 1e-3))
            assert min(_gap(lo, mm, t, 100 * gamma_R) for t in pts) < 0


def _gd_restarts(objective, x0, lr, steps, project=None):
    """Plain GD on each row of x0 (restarts, γ values, variants in one batch); objective:
    (R, d) → (R,). ``project``: map back onto constraints after each step; it only removes
    rounding (on Oᵀθ = 0 the gradient has no O part, 1(1)), which grows where the constraint is
    unstable."""
    x = x0.clone().requires_grad_(True)
    for _ in range(steps):
        (gx,) = torch.autograd.grad(objective(x).sum(), x)
        with torch.no_grad():
            x -= lr * gx
            if project is not None:
                x.copy_(project(x))
    x = x.detach()
    with torch.no_grad():
        return x, objective(x)


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_4_global_minima_rescaling_regression_soft_threshold():
    """Theorem 1(4), θ = u ⊙ w regression with whitened data (XᵀX/N = I): mean(xᵀ(u ⊙ w) − y)²
    = ‖u ⊙ w − β̂‖² + const, β̂ = Xᵀy/N, so ℓ_γ decouples per pair into
    (u w − β̂_j)² + γ(u² + w²), whose global minima are u w = sign(β̂_j) max(0, |β̂_j| − γ) with
    |u| = |w| (soft threshold, Lasso with λ = 2γ): pair j lies on its constraint u_j = w_j = 0
    iff γ ≥ |β̂_j|, i.e. ‖O_jᵀθ*‖² = 2 max(0, |β̂_j| − γ); the mirror of all pairs holds at every
    global minimum iff γ ≥ Γ = max_j |β̂_j|. Checked with 16 random restarts of GD per γ (their
    best value equals the closed form, and every restart reaches it).

    Can fail: plain ridge regression θ = β̂/(1 + γ) has no mirror and is never sparse, and the
    fixed-bias variant (u + b) ⊙ w has ∂ℓ/∂w_j = −2 b_j β̂_j ≠ 0 at u_j = w_j = 0, so its global
    minimum is off every constraint even at γ = 2Γ."""
    N, p, R = 41, 5, 16
    g = gen(60)
    X, _ = torch.linalg.qr(torch.randn(N, p, generator=g, dtype=F64))
    X = X * math.sqrt(N)
    y = X @ torch.tensor([2.0, -1.1, 0.55, 0.2, -0.05], dtype=F64)
    y = y + 0.2 * torch.randn(N, generator=g, dtype=F64)
    bhat = X.T @ y / N
    G = bhat.abs().max().item()
    gammas = [0.35, 0.8, 1.5, 1.2 * G]  # away from every |β̂_j| (slow GD there)
    assert min(abs(gm - b) for gm in gammas for b in bhat.abs().tolist()) > 0.15
    whole = Mirror.rescaling_pairs(range(p), range(p, 2 * p), 2 * p)
    # rows: R restarts per γ, then R restarts of the fixed-bias variant at γ = 2Γ
    gam = torch.tensor(gammas + [2 * G], dtype=F64).repeat_interleave(R)
    bias = torch.zeros(len(gammas) * R + R, p, dtype=F64)
    bias[-R:] = torch.randn(p, generator=g, dtype=F64)

    def objective(t):
        prod = (t[:, :p] + bias) * t[:, p:]
        return ((prod @ X.T - y) ** 2).mean(-1) + gam * t.pow(2).sum(-1)

    theta_all, val_all = _gd_restarts(
        objective, torch.randn(gam.numel(), 2 * p, generator=g, dtype=F64), 0.1, 1200
    )
    for i, gamma in enumerate(gammas):
        theta, val = theta_all[i * R : (i + 1) * R], val_all[i * R : (i + 1) * R]
        s = bhat.sign() * (bhat.abs() - gamma).clamp(min=0)
        best = ((s - bhat) ** 2).sum() + 2 * gamma * s.abs().sum()
        best = best + ((X @ bhat - y) ** 2).mean()
        assert val.min().item() == pytest.approx(best.item(), rel=1e-10)
        assert (val - val.min()).max() < 1e-10  # every restart found a global minimum
        norms = whole.group_norms(theta)  # ‖O_jᵀθ*‖ per pair, per restart
        want = (2 * (bhat.abs() - gamma).clamp(min=0)).sqrt()
        assert_close(norms, want.expand(R, p), atol=1e-7, rtol=1e-7, scale=1.0)
        on = norms < 1e-7
        assert torch.equal(on, (bhat.abs() < gamma).expand(R, p))
        assert bool((whole.breaking(theta)[1] < 1e-7).all()) == (gamma > G)
        # no mirror: ridge minimum β̂/(1 + γ) has no zero coordinate at any γ
        assert (bhat / (1 + gamma)).abs().min() > 1e-3
    theta = theta_all[-R:][val_all[-R:].argmin()]  # fixed bias: every pair off its constraint
    assert whole.group_norms(theta).min() > 1e-5  # ~ |b_j β̂_j| / γ: 3e-4 for β̂_j = −0.05


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_4_global_minima_factorisation_singular_value_threshold():
    """Theorem 1(4), ‖U Wᵀ − A‖²_F + γ(‖U‖² + ‖W‖²), U (5, 3), W (4, 3), σ(A) = (3, 1.7, 0.6,
    0.25): the global minima are M = U Wᵀ with σ_i(M) = max(0, σ_i(A) − γ), i ≤ 3 (nuclear norm
    2γ, rank ≤ 3), and every stationary point is balanced, UᵀU = WᵀW (multiply the two gradient
    equations by Uᵀ, Wᵀ). For the Householder mirror of a unit n (:meth:`Mirror.householder`),
    ‖O_nᵀθ‖² = ‖Un‖² + ‖Wn‖² = nᵀ(UᵀU + WᵀW)n, so at a global minimum
        min_n ‖O_nᵀθ*‖² = λ_min(UᵀU + WᵀW) = 2 σ₃(M) = 2 max(0, σ₃(A) − γ),
    and the n with O_nᵀθ* = 0 span a space of dimension 3 − rank M. Every mirror O_n holds at
    every global minimum iff γ ≥ Γ = σ₁(A) (then θ* = 0); for γ < σ₃(A) none does. Checked with
    12 restarts of GD per γ.

    Can fail: (U + B) Wᵀ with a fixed B has no rotation mirror; its ∂ℓ/∂W = −2AᵀB ≠ 0 at
    θ = 0 and its global minimum keeps W of full column rank, so no O_n holds even at γ > Γ."""
    mU, pW, h, R = 5, 4, 3, 12
    A = _factor_A()
    sig = torch.linalg.svdvals(A)
    g = gen(61)
    d = (mU + pW) * h
    blocks = [(0, (mU, h), 1), (mU * h, (pW, h), 1)]
    gammas = [0.4, 1.0, 2.2, 3.4]
    gam = torch.tensor(gammas + [3.4], dtype=F64).repeat_interleave(R)
    shift = torch.zeros(gam.numel(), mU, h, dtype=F64)
    shift[-R:] = torch.randn(mU, h, generator=g, dtype=F64)  # the (U + B) Wᵀ variant

    def split(t):
        return t[:, : mU * h].view(-1, mU, h), t[:, mU * h :].view(-1, pW, h)

    def objective(t):
        U, W = split(t)
        fit = ((U + shift) @ W.transpose(1, 2) - A).pow(2).sum((1, 2))
        return fit + gam * t.pow(2).sum(-1)

    theta_all, val_all = _gd_restarts(
        objective, torch.randn(gam.numel(), d, generator=g, dtype=F64), 0.05, 1500
    )
    for i, gamma in enumerate(gammas):
        theta, val = theta_all[i * R : (i + 1) * R], val_all[i * R : (i + 1) * R]
        s = (sig[:h] - gamma).clamp(min=0)
        best = ((sig[:h] - s) ** 2).sum() + sig[h:].pow(2).sum() + 2 * gamma * s.sum()
        assert val.min().item() == pytest.approx(best.item(), rel=1e-10)
        assert (val - val.min()).max() < 1e-10
        U, W = split(theta)
        sv = torch.linalg.svdvals(U @ W.transpose(1, 2))[:, :h]
        assert_close(sv, s.expand(R, h), atol=1e-8, rtol=0, scale=1.0)
        assert_close(U.transpose(1, 2) @ U, W.transpose(1, 2) @ W, atol=1e-8, rtol=0, scale=1.0)
        lam, vec = torch.linalg.eigh(U.transpose(1, 2) @ U + W.transpose(1, 2) @ W)
        assert_close(lam[:, 0], 2 * s[-1].expand(R), atol=1e-8, rtol=0, scale=1.0)
        assert ((lam < 1e-8).sum(1) == (s == 0).sum()).all()  # dim of the mirrors that hold
        for r in range(0, R, 4):  # the package's mirror of the best normal measures the same
            m = Mirror.householder(vec[r, :, 0], blocks, d)
            assert m.breaking(theta[r])[1].item() ** 2 == pytest.approx(lam[r, 0].item(), abs=1e-9)
        if gamma > sig[0]:  # every mirror (random normals) holds at every global minimum
            for seed in range(3):
                n = torch.randn(h, generator=gen(seed), dtype=F64)
                m = Mirror.householder(n / n.norm(), blocks, d)
                assert m.breaking(theta)[1].max() < 1e-8
        else:
            assert lam[:, -1].min() > 0.1  # θ* ≠ 0: some O_n fails
    U, W = split(theta_all[-R:][val_all[-R:].argmin()][None])
    lam = torch.linalg.eigvalsh(U.transpose(1, 2) @ U + W.transpose(1, 2) @ W)
    assert lam[0, 0] > 1e-3  # (U + B) Wᵀ: min over n of ‖O_nᵀθ*‖² > 0, no mirror holds


@pytest.mark.usefixtures("one_torch_thread")  # ~10^4 tiny torch ops
def test_theorem1_4_global_minima_tanh_networks_explicit_bound():
    """Theorem 1(4) for tanh models, with an explicit global bound. (a) Neuron f = u tanh(w x),
    sign mirror O = I₂: by 1(3), ℓ_γ(θ) − ℓ_γ(0) ≥ (γ − Γ)‖θ‖², Γ = mean|xy|, so for γ > Γ the
    unique global minimum is θ = 0 (on the constraint); for γ < γ* = |mean xy| (local
    threshold) 0 is not even a local minimum, so no global minimum satisfies Oᵀθ = 0.
    (b) Width-3 network f = Σ_i a_i tanh(w_iᵀx) (no biases), mirrors found by :mod:`detect`:
    3 neuron swaps (e_{w_i} − e_{w_j})/√2 blocks and 3 sign flips. |mean y tanh(wᵀx)| ≤
    ‖w‖ mean(|y|‖x‖) gives ℓ(θ) − ℓ(0) ≥ −2 Σ|a_i|‖w_i‖ K ≥ −K‖θ‖², K = mean(|y|‖x‖): for γ > K
    every global minimum is 0 and satisfies every mirror. Below (γ = 10⁻³, a teacher with three
    distinct neurons) the best of 24 GD restarts breaks every swap mirror, and beats the best
    restart held on the constraint of each swap (GD never leaves it, 1(1)).

    Can fail: a fixed, distinct shift per neuron inside the tanh breaks every swap and sign
    mirror; its global minimum at γ = 1.05 K is off all of their constraints."""
    # (a) the neuron: 32 restarts at γ = 1.05 Γ, then 32 at γ = 0.8 γ*
    x, y = _tanh_data()
    G, gstar = (x * y).abs().mean().item(), (x * y).mean().abs().item()
    gam = torch.tensor([1.05 * G, 0.8 * gstar], dtype=F64).repeat_interleave(32)

    def neuron(t):
        fit = ((t[:, :1] * torch.tanh(t[:, 1:] * x) - y) ** 2).mean(-1)
        return fit + gam * t.pow(2).sum(-1)

    m = Mirror.coordinates([0, 1], 2)
    g = gen(62)
    theta, val = _gd_restarts(neuron, 2 * torch.randn(64, 2, generator=g, dtype=F64), 0.1, 3000)
    assert m.breaking(theta[:32])[1].max() < 1e-8
    theta, val = theta[32:], val[32:]
    best = val.min().item()
    assert best < (y**2).mean().item() - 1e-3  # below ℓ_γ(0)
    assert m.breaking(theta[val < best + 1e-9])[1].min() > 0.1
    # (b) the width-3 network
    din, h, N, R = 3, 3, 61, 24
    X = torch.randn(N, din, generator=g, dtype=F64)
    V = torch.tensor([[1.5, 0.0, 0.5], [-0.5, 1.2, 0.0], [0.0, -0.7, -1.4]], dtype=F64)
    Y = torch.tanh(X @ V.T) @ torch.tensor([1.0, -1.3, 0.8], dtype=F64) + 0.4
    Y = Y + 0.05 * torch.randn(N, generator=g, dtype=F64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(din, h, bias=False), nn.Tanh(), nn.Linear(h, 1, bias=False))
    model = model.double()
    flat = detect.flat_loss(model, nn.functional.mse_loss, X, Y[:, None])
    found = detect.find_mirrors(model, flat, generator=gen(63))
    swaps, flips = found["permutation"], found["sign_flip"]
    assert len(swaps) == 3 and len(flips) == 3
    d = h * din + h
    K = (Y.abs() * X.norm(dim=1)).mean().item()
    # rows (R each): γ = 1.05 K; γ = 1e-3; γ = 1e-3 on the constraint of each swap; the
    # shifted (symmetry-broken) network at γ = 1.05 K
    gam = torch.tensor([1.05 * K, 1e-3, 1e-3, 1e-3, 1e-3, 1.05 * K], dtype=F64)
    gam = gam.repeat_interleave(R)
    shift = torch.zeros(gam.numel(), 1, h, dtype=F64)
    shift[-R:] = torch.tensor([0.3, 0.6, -0.9], dtype=F64)
    held = [slice((2 + i) * R, (3 + i) * R) for i in range(3)]

    def net(t, gam=gam, shift=shift):
        W, a = t[:, : h * din].view(-1, h, din), t[:, h * din :]
        z = torch.einsum("rhd,nd->rnh", W, X) + shift
        out = (torch.tanh(z) * a[:, None, :]).sum(-1)
        return ((out - Y) ** 2).mean(-1) + gam * t.pow(2).sum(-1)

    def project(t):
        t = t.clone()
        for rows, mm in zip(held, swaps, strict=True):
            t[rows] = mm.project(t[rows])
        return t

    t0 = torch.randn(d, generator=g, dtype=F64)
    plain = net(t0[None], gam=torch.zeros(1, dtype=F64), shift=torch.zeros(1, 1, h, dtype=F64))
    assert plain.item() == pytest.approx(flat(t0).item(), rel=1e-12)  # the detected model's loss
    x0 = project(torch.randn(gam.numel(), d, generator=g, dtype=F64))
    theta, val = _gd_restarts(net, x0, 0.1, 800, project=project)
    for mm in swaps + flips:  # γ > K: every restart at 0, on every constraint
        assert mm.breaking(theta[:R])[1].max() < 1e-8
    top, best = theta[R : 2 * R][val[R : 2 * R].argmin()], val[R : 2 * R].min().item()
    for rows, mm in zip(held, swaps, strict=True):
        assert mm.breaking(top)[1].item() > 0.1  # the best minimum is off every swap's constraint
        assert val[rows].min().item() > best + 1e-3  # and beats the best one held on it
    top = theta[-R:][val[-R:].argmin()]
    for mm in swaps + flips:
        assert mm.breaking(top)[1].item() > 1e-4
