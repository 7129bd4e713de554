"""The meta-RL core against hand-computed cases and independent solvers, in-process."""
import math
import sys

import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv

from meta_cli.errors import UserError
from meta_cli.rl import advantages as adv
from meta_cli.rl import baseline, trpo
from meta_cli.rl.base import CORE_METRICS
from meta_cli.rl.envs import Navigation2D, Navigation2DVectorEnv
from meta_cli.rl.maml_trpo import MAMLTRPO
from meta_cli.rl.pretrain_rl import PretrainRL
from meta_cli.rl.random_init import RandomInitRL
from meta_cli.rl.rollout import TRAIN_STREAM, rollout_seeds, sample
from meta_cli.rl.tasks import HalfCheetahDirTasks, Navigation2DTasks, RLTask

TIMING = {"rollout_s", "step_s"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These problems are tiny: two intra-op threads only wait on each other (5x slower on the
    shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_source(**overrides) -> Navigation2DTasks:
    return Navigation2DTasks(**{"horizon": 8, "trajectories": 3, **overrides})


def small_maml(source=None, seed=0, **overrides) -> MAMLTRPO:
    torch.manual_seed(seed)
    settings = {"hidden": [16, 16], "cg_iterations": 4, "ls_steps": 5, **overrides}
    return MAMLTRPO(source or small_source(), **settings)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- returns, advantages, baseline ------------------------------------------------------------
R = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
V = torch.tensor([[1.0], [2.0], [1.0], [2.0]])


def test_discounted_returns_and_gae_of_a_hand_computed_4_step_trajectory():
    """gamma = lambda = 0.5. R = (3.25, 4.5, 5, 4); deltas r_t + 0.5 V_{t+1} - V_t =
    (1, 0.5, 3, 2) with V_4 = 0; A_t = delta_t + 0.25 A_{t+1} = (1.34375, 1.375, 3.5, 2)."""
    mask = torch.ones(4, 1)
    returns = adv.discounted_returns(R, mask, 0.5)
    assert returns.flatten().tolist() == [3.25, 4.5, 5.0, 4.0]
    assert adv.gae(R, V, mask, 0.5, 0.5).flatten().tolist() == [1.34375, 1.375, 3.5, 2.0]
    # lambda = 1 is the return minus the baseline; lambda = 0 the one-step TD error.
    assert torch.allclose(adv.gae(R, V, mask, 0.5, 1.0), returns - V)
    assert adv.gae(R, V, mask, 0.5, 0.0).flatten().tolist() == [1.0, 0.5, 3.0, 2.0]


def test_a_terminal_step_stops_returns_and_bootstrapping():
    """The goal reached at t = 1: rewards after it are 0 and V_2 is not bootstrapped.
    R = (1 + 0.5 * 2, 2) = (2, 2); delta_1 = 2 - 2 = 0, delta_0 = 1 + 0.5 * 2 - 1 = 1."""
    mask = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    rewards = R * mask
    assert adv.discounted_returns(rewards, mask, 0.5).flatten().tolist() == [2.0, 2.0, 0.0, 0.0]
    assert adv.gae(rewards, V, mask, 0.5, 0.5).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_normalized_advantages_have_zero_mean_unit_std_over_the_mask():
    a = torch.tensor([[1.0, 5.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    n = adv.normalize(a, mask)
    valid = n[mask.bool()]
    assert abs(float(valid.mean())) < 1e-6
    assert float(valid.pow(2).mean()) == pytest.approx(1.0, rel=1e-5)
    assert n[1, 1] == 0


def test_linear_baseline_features_are_obs_squares_and_time_cubics():
    obs = torch.tensor([[[2.0, -20.0]], [[3.0, 1.0]]])  # (T=2, n=1, d=2); -20 is clipped to -10
    phi = baseline.features(obs)
    assert phi[0, 0].tolist() == [2.0, -10.0, 4.0, 100.0, 0.0, 0.0, 0.0, 1.0]
    assert torch.allclose(phi[1, 0], torch.tensor([3.0, 1.0, 9.0, 1.0, 0.01, 1e-4, 1e-6, 1.0]))


def test_linear_baseline_fit_matches_least_squares():
    """reg = 0: torch.linalg.lstsq of the features; reg > 0: lstsq of the system stacked with
    sqrt(reg) I against zeros (ridge regression). Masked steps take no part."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(9, 4, 2, generator=g, dtype=torch.float64)
    returns = torch.randn(9, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(9, 4, dtype=torch.float64)
    mask[6:, 1] = 0
    phi = baseline.features(obs)[mask.bool()]
    y = returns[mask.bool()]
    exact = torch.linalg.lstsq(phi, y.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(baseline.fit(phi, y, reg=0.0), exact, atol=1e-8)
    reg = 0.3
    stacked = torch.cat([phi, math.sqrt(reg) * torch.eye(phi.shape[1], dtype=torch.float64)])
    target = torch.cat([y, torch.zeros(phi.shape[1], dtype=torch.float64)])
    ridge = torch.linalg.lstsq(stacked, target.unsqueeze(1)).solution.squeeze(1)
    assert torch.allclose(baseline.fit(phi, y, reg=reg), ridge, atol=1e-8)
    values = baseline.fit_predict(obs, returns, mask, reg=0.0)
    assert torch.allclose(values[mask.bool()], phi @ exact, atol=1e-8)
    assert (values[~mask.bool()] == 0).all()


# -- TRPO ---------------------------------------------------------------------------------------
def test_conjugate_gradient_matches_linalg_solve_on_an_spd_system():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = trpo.conjugate_gradient(lambda v: a @ v, b, iterations=6, residual_tol=0.0)
    assert torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)


def quadratic_problem(seed: int):
    """Linear loss g.theta, KL = 1/2 (theta - theta0)' A (theta - theta0)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.1 * torch.eye(5, dtype=torch.float64)
    grad = torch.randn(5, generator=g, dtype=torch.float64)
    theta = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    theta0 = theta.detach().clone()

    def evaluate():
        d = theta.detach() - theta0
        return float(grad @ theta.detach()), float(0.5 * d @ a @ d)

    return a, grad, theta, theta0, evaluate


@pytest.mark.parametrize("seed", range(20))
def test_the_line_search_never_accepts_a_step_that_breaks_the_kl_bound(seed):
    """A step direction scaled 1 to 50 times too far (as with a Fisher matrix underestimated):
    whatever is accepted has KL <= max_kl and a lower loss; otherwise theta is restored."""
    a, grad, theta, theta0, evaluate = quadratic_problem(seed)
    max_kl = 0.01
    direction = -torch.linalg.solve(a, grad)
    scale = math.sqrt(2 * max_kl / float(direction @ a @ direction)) * (1 + 49 * (seed / 19))
    loss_before = evaluate()[0]
    result = trpo.line_search([theta], scale * direction, evaluate, loss_before, max_kl, steps=10, backtrack=0.8)
    loss, kl = evaluate()
    if result.accepted:
        assert kl <= max_kl and loss < loss_before
        assert torch.allclose(theta.detach(), theta0 + result.fraction * scale * direction)
    else:
        assert torch.equal(theta.detach(), theta0)
    assert (kl, result.accepted) == ((kl, True) if result.accepted else (0.0, False))


def test_the_line_search_restores_theta_when_every_fraction_breaks_the_bound():
    a, grad, theta, theta0, evaluate = quadratic_problem(0)
    direction = -torch.linalg.solve(a, grad)
    full = 100 * math.sqrt(2 * 0.01 / float(direction @ a @ direction)) * direction
    result = trpo.line_search([theta], full, evaluate, evaluate()[0], 0.01, steps=5, backtrack=0.9)
    assert not result.accepted and torch.equal(theta.detach(), theta0)


def test_trpo_step_lands_on_the_trust_region_and_respects_it():
    """With the exact Fisher the natural-gradient step has 1/2 s'As = max_kl (to rounding):
    the accepted KL is at most max_kl and within a backtrack of it."""
    a, grad, theta, theta0, evaluate = quadratic_problem(3)
    loss = grad @ theta
    stats = trpo.trpo_step([theta], loss, lambda: (lambda v: a @ v), evaluate, max_kl=0.01,
                           cg_iterations=5, damping=0.0, ls_steps=10, ls_backtrack=0.8)
    assert stats["step_fraction"] > 0 and stats["kl"] <= 0.01
    assert stats["kl"] >= 0.01 * 0.8 ** 2 - 1e-12
    assert stats["loss_after"] < stats["loss_before"]


def test_trpo_step_refuses_a_non_finite_gradient_without_moving():
    theta = torch.nn.Parameter(torch.ones(3))
    before = theta.detach().clone()
    loss = (theta * torch.tensor([1.0, float("nan"), 0.0])).sum()
    with pytest.raises(UserError, match="not finite"):
        trpo.trpo_step([theta], loss, lambda: (lambda v: v), lambda: (0.0, 0.0), 0.01, 3, 0.0, 3, 0.8)
    assert torch.equal(theta.detach(), before)


# -- environments -------------------------------------------------------------------------------
def test_navigation2d_dynamics_clipping_reward_and_termination_by_hand():
    env = Navigation2D({"goal_x": 0.25, "goal_y": -0.1})
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    obs, reward, terminated, truncated, _ = env.step(np.array([0.3, -0.05]))  # x clipped to 0.1
    assert obs == pytest.approx([0.1, -0.05])
    assert reward == pytest.approx(-math.hypot(0.15, 0.05), rel=1e-6)
    assert not terminated and not truncated
    obs, reward, terminated, _, _ = env.step(np.array([-7.0, 0.0]))  # clipped to -0.1
    assert obs == pytest.approx([0.0, -0.05], abs=1e-7)
    assert reward == pytest.approx(-math.hypot(0.25, 0.05), rel=1e-6)
    env.task = {"goal_x": 0.105, "goal_y": -0.045}
    env.reset()
    _, reward, terminated, _, _ = env.step(np.array([0.1, -0.05]))  # within 0.01 per coordinate
    assert terminated and reward == pytest.approx(-math.hypot(0.005, 0.005), rel=1e-4)


def test_the_numpy_vector_env_equals_gymnasiums_sync_vector_env_bit_for_bit():
    """Noisy steps towards the goals, so that robots terminate and autoreset on the way."""
    rng = np.random.default_rng(0)
    tasks = [{"goal_x": float(x), "goal_y": float(y)} for x, y in rng.uniform(-0.15, 0.15, size=(6, 2))]
    ours = Navigation2DVectorEnv(6)
    theirs = SyncVectorEnv([lambda: Navigation2D() for _ in range(6)])
    ours.set_attr("task", tasks)
    theirs.set_attr("task", tasks)
    obs, other = ours.reset(seed=1)[0], theirs.reset(seed=1)[0]
    assert np.array_equal(obs, other)
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks])
    terminations = 0
    for _ in range(60):
        actions = (goals - obs + rng.normal(size=(6, 2)) * 0.01).astype(np.float32)
        a, b = ours.step(actions), theirs.step(actions)
        for x, y in zip(a[:4], b[:4]):
            assert np.array_equal(x, y)
        obs = a[0]
        terminations += int(a[2].sum())
    assert terminations > 0


def test_rollout_shapes_horizon_masks_and_termination():
    """A deterministic policy (std 1e-6, constant mean) to a goal one step away: each
    trajectory ends at t = 0; nothing after it counts."""
    source = small_source(horizon=5, trajectories=2)
    algo = small_maml(source)
    with torch.no_grad():
        algo.policy.mean[-1].weight.zero_()
        algo.policy.mean[-1].bias.copy_(torch.tensor([0.05, 0.05]))
        algo.policy.log_std.fill_(math.log(1e-6))
    near, far = RLTask("test", 0, {"goal_x": 0.05, "goal_y": 0.05}), RLTask("test", 1, {"goal_x": 0.5, "goal_y": 0.5})
    seeds = [rollout_seeds(0, TRAIN_STREAM, 0, t, 0, 2) for t in (near, far)]
    (r_near, r_far), seconds = sample(source, algo.policy, [algo.policy] * 2, [near, far], seeds)
    assert r_near.obs.shape == (5, 2, 2) and r_near.actions.shape == (5, 2, 2)
    assert r_near.rewards.shape == r_near.mask.shape == r_near.log_probs.shape == (5, 2)
    assert r_near.mask[:, 0].tolist() == [1, 0, 0, 0, 0] and r_near.dones[:, 0].tolist() == [1, 0, 0, 0, 0]
    assert r_near.rewards[1:].abs().sum() == 0
    assert r_far.mask.sum() == 10 and r_far.dones.sum() == 0
    # (0.05, 0.05) per step towards (0.5, 0.5): distance sqrt(2) * (0.5 - 0.05 (t + 1)).
    expected = [-math.sqrt(2) * (0.5 - 0.05 * (t + 1)) for t in range(5)]
    assert r_far.rewards[:, 0].tolist() == pytest.approx(expected, rel=1e-4)
    assert seconds >= 0


def test_a_tasks_rollout_does_not_depend_on_the_tasks_sampled_with_it():
    source = small_source()
    algo = small_maml(source)
    tasks = source.tasks("train", range(3), seed=5)
    seeds = [rollout_seeds(5, TRAIN_STREAM, 2, t, 0, 3) for t in tasks]
    together, _ = sample(source, algo.policy, [algo.policy] * 3, tasks, seeds)
    alone, _ = sample(source, algo.policy, [algo.policy], tasks[1:2], seeds[1:2])
    assert torch.equal(together[1].actions, alone[0].actions)
    assert torch.equal(together[1].rewards, alone[0].rewards)


def test_tasks_are_a_pure_function_of_split_index_and_seed():
    source = Navigation2DTasks()
    assert source.task_at("train", 3, 7) == source.task_at("train", 3, 7)
    assert source.task_at("train", 3, 7).params == source.task_at("train", 3, 7).params
    assert source.task_at("test", 3, 7).params != source.task_at("train", 3, 7).params
    goals = np.array([[t.params["goal_x"], t.params["goal_y"]] for t in source.tasks("val", range(200), 0)])
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.2


@pytest.mark.parametrize("key", ["horizon", "trajectories"])
def test_a_non_positive_horizon_or_batch_of_trajectories_is_refused(key):
    with pytest.raises(UserError, match=f"dataset.{key} must be a positive integer"):
        Navigation2DTasks(**{key: 0})


def test_missing_mujoco_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco -> ImportError
    with pytest.raises(UserError, match=r"needs MuJoCo.*meta-cli\[mujoco\]"):
        HalfCheetahDirTasks()


def test_halfcheetah_rewards_are_the_maml_papers():
    pytest.importorskip("mujoco")
    from meta_cli.rl.envs import HalfCheetahDir, HalfCheetahVel, make_halfcheetah
    action = np.array([2.0, -0.5, 0.3, 0.0, 1.0, -1.5])
    clipped = np.clip(action, -1, 1)
    for wrapper, task, reward_of in (
            (HalfCheetahDir, {"direction": -1.0}, lambda v: -v),
            (HalfCheetahVel, {"velocity": 1.5}, lambda v: -abs(v - 1.5))):
        env = make_halfcheetah(wrapper, horizon=3, task=task)
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(action)
        assert reward == pytest.approx(reward_of(info["x_velocity"]) - 0.05 * float(clipped @ clipped))
        env.step(action)
        assert env.step(action)[3]  # truncated at the horizon
        env.close()


# -- algorithms ---------------------------------------------------------------------------------
def test_rl_and_supervised_algorithms_refuse_each_others_datasets():
    from meta_cli.algorithms.maml import MAML
    with pytest.raises(UserError, match="MAMLTRPO is reinforcement learning and needs an environment"):
        MAMLTRPO.check_task("classification")
    with pytest.raises(UserError, match="this dataset is rl"):
        MAML.check_task("rl")


@pytest.mark.parametrize("steps", [1, 2])
def test_the_batched_meta_objective_equals_learn2learns_task_loop(steps):
    """Surrogate, meta-gradient and Fisher-vector product: learn2learn's clone/adapt task by task
    with the KL's Hessian by double backpropagation through the adaptation (third order)
    against the stacked meta-batch with the J' F J product (second order)."""
    source = small_source()
    algo = small_maml(source, adaptation_steps=steps, backend="l2l")
    tasks = source.tasks("train", range(3), 0)
    with torch.enable_grad():
        rollouts = algo.adapt_and_sample(tasks, steps, algo.train_seeds(0, 0))
    params = list(algo.parameters())
    results = {}
    for backend in ("l2l", "batched"):
        algo.backend = backend
        surrogate, clipped, kl, fisher = algo.objective(rollouts, [None] * 3, second_order=True)
        gradient = trpo.flat(torch.autograd.grad(surrogate, params, retain_graph=True))
        v = torch.randn(gradient.shape, generator=torch.Generator().manual_seed(0))
        results[backend] = (surrogate, clipped, kl, gradient, fisher()(v))
    for a, b in zip(results["l2l"], results["batched"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert results["batched"][4].abs().max() > 1e-3  # the Fisher product is not trivially 0


def test_evaluate_gives_identical_returns_for_the_same_seed():
    source = small_source()
    tasks = source.tasks("test", range(4), 3)
    first = small_maml(source).evaluate(tasks, (0, 1, 2), seed=3)
    second = small_maml(source).evaluate(tasks, (0, 1, 2), seed=3)
    other = small_maml(source).evaluate(tasks, (0, 1, 2), seed=4)
    assert first == second and sorted(first) == [0, 1, 2] and len(first[2]) == 4
    assert first != other
    # As `meta-cli eval checkpoint=...` will: the weights loaded into another initialisation.
    loaded = small_maml(source, seed=99)
    loaded.load_state_dict(small_maml(source).state_dict())
    assert loaded.evaluate(tasks, (0, 1, 2), seed=3) == first


@pytest.mark.parametrize("settings", [{"outer": "trpo"}, {"outer": "ppo"},
                                      {"outer": "trpo", "fisher_subsample": 2, "adaptation_steps": 2}])
def test_a_meta_step_is_deterministic_and_resumes_bit_exactly(settings):
    """Two steps in one go, and the same two steps with the weights (and Adam) saved after the
    first and loaded into an algorithm built from another seed: identical metrics and weights."""
    source = small_source()
    tasks = [source.tasks("train", range(i * 3, i * 3 + 3), 0) for i in range(2)]
    straight = small_maml(source, **settings)
    before = {k: v.clone() for k, v in straight.state_dict().items()}
    metrics = [straight.meta_step(tasks[i], i, seed=0) for i in range(2)]
    assert not state_equal(before, straight.state_dict())

    first = small_maml(source, **settings)
    assert {k: v for k, v in first.meta_step(tasks[0], 0, 0).items() if k not in TIMING} == \
        {k: v for k, v in metrics[0].items() if k not in TIMING}
    resumed = small_maml(source, seed=99, **settings)
    resumed.load_state_dict(first.state_dict())
    resumed.load_outer_state_dict(first.outer_state_dict())
    again = resumed.meta_step(tasks[1], 1, 0)
    assert {k: v for k, v in again.items() if k not in TIMING} == \
        {k: v for k, v in metrics[1].items() if k not in TIMING}
    assert state_equal(resumed.state_dict(), straight.state_dict())
    assert set(CORE_METRICS) <= set(again)


@pytest.mark.parametrize("make", [small_maml, lambda s: small_maml(s, outer="ppo"),
                                  lambda s: PretrainRL(s, hidden=[16, 16], cg_iterations=3),
                                  lambda s: PretrainRL(s, hidden=[16, 16], outer="ppo")])
def test_a_nan_return_stops_the_step_before_any_weight_changes(make):
    source = small_source()
    algo = make(source)
    with torch.no_grad():
        algo.policy.mean[-1].bias[0] = float("nan")  # a diverged policy: NaN actions, NaN returns
    before = {k: v.clone() for k, v in algo.state_dict().items()}
    with pytest.raises(UserError, match=r"iteration 4: the return of train task 0 .* is nan"):
        algo.meta_step(source.tasks("train", range(2), 0), 4, 0)
    for k, v in algo.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


def test_the_baselines_train_and_do_not_train():
    source = small_source()
    tasks = source.tasks("train", range(3), 0)
    torch.manual_seed(0)
    pretrain = PretrainRL(source, hidden=[16, 16], cg_iterations=3, fisher_subsample=2)
    before = {k: v.clone() for k, v in pretrain.state_dict().items()}
    metrics = pretrain.meta_step(tasks, 0, 0)
    assert not state_equal(before, pretrain.state_dict()) and math.isfinite(metrics["return_post"])
    assert set(CORE_METRICS) <= set(metrics)
    torch.manual_seed(0)
    scratch = RandomInitRL(source, hidden=[16, 16])
    before = {k: v.clone() for k, v in scratch.state_dict().items()}
    metrics = scratch.meta_step(tasks, 0, 0)
    assert state_equal(before, scratch.state_dict())
    assert set(metrics) >= set(CORE_METRICS)
