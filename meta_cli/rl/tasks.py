"""Task distributions for meta-RL: the `dataset` group's RL options.

A task source is the RL twin of `meta_cli.data.base.TaskSource`: `task_at(split, index, seed)` is
task number `index` of `split`, a pure function of its arguments (drawn from
`episode_rng(seed, split, index)`), so training, validation and test tasks are three seeded
streams of the same distribution, and no global RNG is read. The source also fixes what every
algorithm on it shares, so that baselines run on the same tasks and budget: the horizon, the
trajectories per task and adaptation step, and the return estimator (gamma, GAE lambda).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import gymnasium as gym
from gymnasium.vector import SyncVectorEnv, VectorEnv

from meta_cli.data.base import Split, episode_rng
from meta_cli.errors import UserError, shown
from meta_cli.params import Ge
from meta_cli.rl import envs


@dataclass(frozen=True)
class RLTask:
    """One task: where it comes from (split, index) and what it is (`params`, e.g. a goal)."""

    split: Split
    index: int
    params: dict[str, float] = field(hash=False)


class RLTaskSource(abc.ABC):
    """A distribution of MDPs. Subclasses are Hydra `_target_`s of the `dataset` group."""

    task: Literal["rl"] = "rl"
    # Set at run time by the engine, as for TaskSource; RL sources have no class splits.
    injected: tuple[str, ...] = ("splits",)
    observation_dim: int
    action_dim: int
    #: Sub-environments per vector env (None: a whole meta-batch in one). Rollouts of a task
    #: depend on its own seeds only, so how tasks are grouped does not change any number.
    max_envs: int | None = None

    def __init__(self, horizon: int, trajectories: int, gamma: float, gae_lambda: float) -> None:
        for name, value in (("horizon", horizon), ("trajectories", trajectories)):
            if not isinstance(value, int) or value < 1:
                raise UserError(f"dataset.{name} must be a positive integer; got {shown(value)}.")
        if not 0.0 <= gamma <= 1.0 or not 0.0 <= gae_lambda <= 1.0:
            raise UserError(f"dataset.gamma and dataset.gae_lambda must lie in [0, 1]; got "
                            f"{gamma} and {gae_lambda}.")
        self.horizon, self.trajectories = horizon, trajectories
        self.gamma, self.gae_lambda = float(gamma), float(gae_lambda)
        self._envs: dict[int, VectorEnv] = {}

    def to(self, device: Any) -> "RLTaskSource":
        """Rollouts run on the CPU (NumPy environments); nothing moves."""
        return self

    @property
    def name(self) -> str:
        return type(self).__name__

    def task_at(self, split: Split, index: int, seed: int) -> RLTask:
        """Task number `index` of `split`; the same arguments give the same task. (Not `task`:
        that attribute is the source's kind, "rl", as in TaskSource.)"""
        return RLTask(split, index, self.sample_params(episode_rng(seed, split, index)))

    def tasks(self, split: Split, indices: range | list[int], seed: int) -> list[RLTask]:
        return [self.task_at(split, i, seed) for i in indices]

    @abc.abstractmethod
    def sample_params(self, rng: Any) -> dict[str, float]:
        """A task's parameters from its own numpy Generator."""

    @abc.abstractmethod
    def make_envs(self, num_envs: int) -> VectorEnv:
        """A vector env of `num_envs` sub-environments whose `task` attribute can be set."""

    def envs(self, num_envs: int) -> VectorEnv:
        """The (cached) vector env of `num_envs` sub-environments."""
        if num_envs not in self._envs:
            self._envs[num_envs] = self.make_envs(num_envs)
        return self._envs[num_envs]

    def close(self) -> None:
        for vector_env in self._envs.values():
            vector_env.close()
        self._envs.clear()

    def describe(self) -> dict[str, Any]:
        """Saved in the run dir and checkpoints, like TaskSource.describe()."""
        return {"splits": {}, "data": {
            "horizon": self.horizon, "trajectories": self.trajectories, "gamma": self.gamma,
            "gae_lambda": self.gae_lambda, **self.describe_tasks()}}

    def describe_tasks(self) -> dict[str, Any]:
        return {}


class Navigation2DTasks(RLTaskSource):
    """The MAML paper's 2D navigation: goals uniform in `goal_range`^2, horizon 100."""

    observation_dim = 2
    action_dim = 2

    def __init__(
        self,
        horizon: Annotated[int, Ge(1)] = 100,
        trajectories: Annotated[int, Ge(1)] = 20,
        gamma: Annotated[float, Ge(0)] = 0.99,
        gae_lambda: Annotated[float, Ge(0)] = 1.0,
        goal_range: list[float] = (-0.5, 0.5),
        splits: Any = None,
    ) -> None:
        super().__init__(horizon, trajectories, gamma, gae_lambda)
        if len(goal_range) != 2 or goal_range[0] > goal_range[1]:
            raise UserError(f"dataset.goal_range must be [low, high] with low <= high; got {list(goal_range)}.")
        self.goal_range = (float(goal_range[0]), float(goal_range[1]))

    def sample_params(self, rng: Any) -> dict[str, float]:
        x, y = rng.uniform(*self.goal_range, size=2)
        return {"goal_x": float(x), "goal_y": float(y)}

    def make_envs(self, num_envs: int) -> VectorEnv:
        return envs.Navigation2DVectorEnv(num_envs)

    def describe_tasks(self) -> dict[str, Any]:
        return {"goal_range": list(self.goal_range)}


class _HalfCheetahTasks(RLTaskSource):
    """HalfCheetah-v5 (17-d observation, 6-d action) with a task reward; needs meta-cli[mujoco]."""

    observation_dim = 17
    action_dim = 6
    wrapper: type[gym.Wrapper]
    dataset: str

    def __init__(self, horizon: int, trajectories: int, gamma: float, gae_lambda: float) -> None:
        envs.require_mujoco(self.dataset)
        super().__init__(horizon, trajectories, gamma, gae_lambda)
        # MuJoCo is stepped one sub-env at a time anyway; a task's worth of envs is built once.
        self.max_envs = trajectories

    def make_envs(self, num_envs: int) -> VectorEnv:
        placeholder = self.sample_params(episode_rng(0, "train", 0))
        return SyncVectorEnv([lambda: envs.make_halfcheetah(self.wrapper, self.horizon, placeholder)
                              for _ in range(num_envs)])


class HalfCheetahDirTasks(_HalfCheetahTasks):
    """The MAML paper's forward/backward cheetah: direction +1 or -1 with probability 1/2."""

    wrapper = envs.HalfCheetahDir
    dataset = "halfcheetah_dir"

    def __init__(
        self,
        horizon: Annotated[int, Ge(1)] = 200,
        trajectories: Annotated[int, Ge(1)] = 20,
        gamma: Annotated[float, Ge(0)] = 0.99,
        gae_lambda: Annotated[float, Ge(0)] = 1.0,
        splits: Any = None,
    ) -> None:
        super().__init__(horizon, trajectories, gamma, gae_lambda)

    def sample_params(self, rng: Any) -> dict[str, float]:
        return {"direction": float(rng.choice((-1.0, 1.0)))}


class HalfCheetahVelTasks(_HalfCheetahTasks):
    """The MAML paper's goal-velocity cheetah: velocity uniform in `velocity_range` (0 to 2)."""

    wrapper = envs.HalfCheetahVel
    dataset = "halfcheetah_vel"

    def __init__(
        self,
        horizon: Annotated[int, Ge(1)] = 200,
        trajectories: Annotated[int, Ge(1)] = 20,
        gamma: Annotated[float, Ge(0)] = 0.99,
        gae_lambda: Annotated[float, Ge(0)] = 1.0,
        velocity_range: list[Annotated[float, Ge(0)]] = (0.0, 2.0),
        splits: Any = None,
    ) -> None:
        if len(velocity_range) != 2 or velocity_range[0] > velocity_range[1]:
            raise UserError(f"dataset.velocity_range must be [low, high] with low <= high; "
                            f"got {list(velocity_range)}.")
        self.velocity_range = (float(velocity_range[0]), float(velocity_range[1]))
        super().__init__(horizon, trajectories, gamma, gae_lambda)

    def sample_params(self, rng: Any) -> dict[str, float]:
        return {"velocity": float(rng.uniform(*self.velocity_range))}

    def describe_tasks(self) -> dict[str, Any]:
        return {"velocity_range": list(self.velocity_range)}
