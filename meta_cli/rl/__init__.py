"""Meta-reinforcement learning: task distributions on Gymnasium, MAML-TRPO/PPO and
its baselines. One concern per module:

- tasks.py: the `dataset` group's RL options (task streams, horizon, trajectories, gamma)
- envs.py: Navigation2D (and its NumPy vector env), HalfCheetahDir / HalfCheetahVel
- rollout.py: seeded, batched sampling through a vector env
- policy.py: the Gaussian MLP policy
- advantages.py, baseline.py: discounted returns, GAE, the linear feature baseline
- trpo.py, ppo.py, outer.py: the outer updates (outer.py: TRPO as the Rollouts regime steps it)
- base.py: what the algorithms share (inner loop, sampling, evaluation, the engine contract)
- maml_trpo.py, meta_batch.py: MAML with TRPO/PPO (learn2learn's loop, or the batched objective)
- pretrain_rl.py, random_init.py: the baselines
(returns after 0..3 adaptation steps, mean +- ci95 over test tasks: meta_cli/evaluation/returns.py)
"""
