"""The MAML paper's meta-RL environments on Gymnasium (Finn et al., 2017, section 5.3).

- `Navigation2D`: a point robot in the plane. The observation is its position (start: the
  origin); an action is a velocity, clipped to [-0.1, 0.1] per coordinate; the reward is the
  negative Euclidean distance to the task's goal. An episode terminates when the robot is within
  0.01 of the goal in both coordinates (as in the MAML code) and is cut at the horizon by the
  sampler. `Navigation2DVectorEnv` runs N of them as one NumPy array (a Gymnasium `VectorEnv`
  with the same NEXT_STEP autoreset as `SyncVectorEnv`), so that a meta-batch's rollouts are a
  hundred array operations rather than tens of thousands of Python calls.
- `HalfCheetahDir` / `HalfCheetahVel`: wrappers around Gymnasium's MuJoCo `HalfCheetah-v5`
  (the `mujoco` package, no mujoco-py) that replace its reward by the paper's task rewards:
  direction * forward velocity, or -|forward velocity - goal velocity|, minus 0.05 |a|^2.

A sub-environment's task is its `task` attribute, a dict of floats (e.g. {"goal_x": .., "goal_y":
..}); a vector env's are set with `envs.set_attr("task", [one dict per sub-env])`.
"""
from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from meta_cli.errors import UserError

#: Navigation2D: largest velocity per coordinate, and the goal tolerance per coordinate.
MAX_ACTION = 0.1
GOAL_TOLERANCE = 0.01
#: The MAML paper's control cost on the half-cheetah: 0.5 * 0.1 * |a|^2.
CHEETAH_CTRL_COST = 0.05


def _navigation_spaces() -> tuple[spaces.Box, spaces.Box]:
    observation = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action = spaces.Box(-MAX_ACTION, MAX_ACTION, shape=(2,), dtype=np.float32)
    return observation, action


def _goal(task: dict[str, float]) -> np.ndarray:
    return np.array([task["goal_x"], task["goal_y"]], dtype=np.float32)


class Navigation2D(gym.Env):
    """One point robot; `task = {"goal_x": x, "goal_y": y}`. Observation (2,) float32."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, task: dict[str, float] | None = None) -> None:
        self.observation_space, self.action_space = _navigation_spaces()
        self.task = task or {"goal_x": 0.0, "goal_y": 0.0}
        self.state = np.zeros(2, dtype=np.float32)

    @property
    def task(self) -> dict[str, float]:
        return self._task

    @task.setter
    def task(self, task: dict[str, float]) -> None:
        self._task = dict(task)
        self.goal = _goal(task)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # the start is the origin: nothing random to seed
        self.state = np.zeros(2, dtype=np.float32)
        return self.state.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        velocity = np.clip(np.asarray(action, dtype=np.float32), -MAX_ACTION, MAX_ACTION)
        self.state = self.state + velocity
        offset = self.state - self.goal
        reward = -float(np.sqrt(np.sum(offset * offset)))
        reached = bool(np.all(np.abs(offset) < GOAL_TOLERANCE))
        return self.state.copy(), reward, reached, False, {}


class Navigation2DVectorEnv(VectorEnv):
    """`num_envs` point robots stepped as one (num_envs, 2) array.

    Same transitions as `SyncVectorEnv([Navigation2D] * num_envs)` (NEXT_STEP autoreset: the
    step after a termination resets that robot to the origin with reward 0), bit for bit.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = _navigation_spaces()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.goals = np.zeros((num_envs, 2), dtype=np.float32)
        self.states = np.zeros((num_envs, 2), dtype=np.float32)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._tasks: list[dict[str, float]] = [{"goal_x": 0.0, "goal_y": 0.0}] * num_envs

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        # Seeds are accepted for the VectorEnv contract; the dynamics use no randomness.
        self.states = np.zeros((self.num_envs, 2), dtype=np.float32)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        return self.states.copy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                 dict[str, Any]]:
        velocity = np.clip(np.asarray(actions, dtype=np.float32), -MAX_ACTION, MAX_ACTION)
        restart = self._autoreset[:, None]
        self.states = np.where(restart, np.float32(0.0), self.states + velocity)
        offset = self.states - self.goals
        distance = np.sqrt(np.sum(offset * offset, axis=1))
        rewards = np.where(self._autoreset, 0.0, -distance.astype(np.float64))
        terminated = ~self._autoreset & np.all(np.abs(offset) < GOAL_TOLERANCE, axis=1)
        self._autoreset = terminated
        return self.states.copy(), rewards, terminated, np.zeros(self.num_envs, dtype=bool), {}

    def get_attr(self, name: str) -> tuple[Any, ...]:
        if name == "task":
            return tuple(self._tasks)
        raise AttributeError(name)

    def set_attr(self, name: str, values: list[Any] | tuple[Any, ...] | Any) -> None:
        if name != "task":
            raise AttributeError(f"{type(self).__name__} has no settable attribute {name!r}")
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"{len(values)} tasks for {self.num_envs} environments")
        self._tasks = [dict(v) for v in values]
        self.goals = np.stack([_goal(v) for v in values])


def require_mujoco(dataset: str) -> None:
    """Raise the one-line error when the optional MuJoCo extra is not installed."""
    try:
        import mujoco  # noqa: F401
    except ImportError:
        raise UserError(
            f"dataset={dataset} needs MuJoCo, which is not installed: "
            "pip install 'meta-cli[mujoco]' (gymnasium[mujoco]), or pick dataset=navigation2d."
        ) from None


class _HalfCheetahTask(gym.Wrapper):
    """HalfCheetah-v5 with a task reward computed from its forward velocity and the action.

    Actions are clipped to the action space ([-1, 1]) before stepping and before the control
    cost: MuJoCo clamps controls anyway, and an unclipped Gaussian action would be charged for
    torque it never applied.
    """

    def __init__(self, env: gym.Env, task: dict[str, float]) -> None:
        super().__init__(env)
        self.task = task

    def task_reward(self, x_velocity: float) -> float:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        space = self.action_space
        action = np.clip(np.asarray(action, dtype=np.float64), space.low, space.high)
        observation, _, terminated, truncated, info = self.env.step(action)
        ctrl = CHEETAH_CTRL_COST * float(np.sum(action * action))
        reward = self.task_reward(float(info["x_velocity"])) - ctrl
        return observation, reward, terminated, truncated, info


class HalfCheetahDir(_HalfCheetahTask):
    """`task = {"direction": +1 or -1}`: reward = direction * forward velocity - 0.05 |a|^2."""

    def task_reward(self, x_velocity: float) -> float:
        return self.task["direction"] * x_velocity


class HalfCheetahVel(_HalfCheetahTask):
    """`task = {"velocity": v}`: reward = -|forward velocity - v| - 0.05 |a|^2."""

    def task_reward(self, x_velocity: float) -> float:
        return -abs(x_velocity - self.task["velocity"])


def _route_mujoco_warnings() -> None:
    """MuJoCo prints its warnings to stderr and appends them to MUJOCO_LOG.TXT in the working
    directory. Send them to Python's warnings instead, without the one that Gymnasium's own
    half_cheetah.xml triggers on every load under mujoco >= 3.3 (its deprecated settotalmass)."""
    import mujoco

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)


def make_halfcheetah(wrapper: type[_HalfCheetahTask], horizon: int, task: dict[str, float]) -> gym.Env:
    """Gymnasium's HalfCheetah-v5 cut at `horizon` steps, with the task reward of `wrapper`."""
    _route_mujoco_warnings()
    env = gym.make("HalfCheetah-v5", max_episode_steps=horizon, disable_env_checker=True)
    return wrapper(env, task)
