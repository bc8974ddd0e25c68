"""Task planning and the scripted gripper controller for the tabletop episodes.

A plan is a list of keyframes for the mocap hand (position, yaw, finger opening) at fractions
of the episode horizon, and the controller eases between them. Objects move only through
contacts with the fingers, never by setting their pose.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .instructions import PUSH_DIRECTIONS, format_instruction
from .scene import FINGER_HALF_SIZE, HAND_HOME, HELDOUT_PAIRS, ObjectSpec

__all__ = ["Keyframe", "Task", "hand_command", "plan_task"]

# Hand travel during a push in metres; the object moves this minus the approach gap.
PUSH_TRAVEL = 0.17
APPROACH_GAP = 0.015
CRUISE_HEIGHT = 0.10
LIFT_HEIGHT = 0.12
GRASP_OPENING = 0.05
# Hand origin height that leaves the finger tips 4 mm above the table.
PUSH_HEIGHT = FINGER_HALF_SIZE[2] + 0.004
# Area the object centre must stay in after a push (inside the table edge).
REACH_HALF_SIZE = (0.29, 0.19)

INTENT_WEIGHTS = {"push": 0.5, "lift": 0.2, "next_to": 0.3}


@dataclass(frozen=True)
class Keyframe:
    """Hand pose at a fraction of the episode horizon.

    Attributes:
        time: Fraction of the horizon in [0, 1].
        position: Hand origin (the point midway between the finger plates), world metres.
        yaw: Rotation about the vertical axis in radians.
        opening: Commanded finger opening in metres (0 closes the fingers).
    """

    time: float
    position: tuple[float, float, float]
    yaw: float
    opening: float


@dataclass(frozen=True)
class Task:
    """A planned task: what the instruction requests and how the hand executes it.

    Attributes:
        intent: One of `instructions.INTENTS`.
        target: Index of the object that moves.
        reference: Index of the object to move next to, or -1.
        keyframes: The hand's keyframes in time order.
    """

    intent: str
    target: int
    reference: int
    keyframes: tuple[Keyframe, ...]


def plan_task(
    rng: np.random.Generator,
    objects: list[ObjectSpec],
    positions: np.ndarray,
    heldout: bool,
    target: int | None = None,
) -> Task | None:
    """Choose a feasible task for the scene.

    Args:
        rng: Random generator for the choice.
        objects: The scene's objects.
        positions: (K, 2) settled object centres on the table in metres.
        heldout: Whether the target must be a held-out colour-shape pair.
        target: Object index the task must move, or None to choose one.

    Returns:
        A task, or None when no object allows a task that keeps clear of the others.
    """
    targets = list(range(len(objects)))
    if target is not None:
        targets = [target] if target < len(objects) else []
    if heldout:
        targets = [i for i in targets if (objects[i].color, objects[i].shape) in HELDOUT_PAIRS]
    rng.shuffle(targets)

    kinds = list(INTENT_WEIGHTS)
    kind_order = rng.choice(kinds, size=len(kinds), replace=False, p=list(INTENT_WEIGHTS.values()))
    for kind in kind_order:
        for candidate in targets:
            task = _plan_kind(rng, str(kind), candidate, objects, positions)
            if task is not None:
                return task
    return None


def describe_task(
    rng: np.random.Generator, task: Task, objects: list[ObjectSpec], heldout: bool
) -> str:
    """Write the instruction text of a task."""
    reference = objects[task.reference].name if task.reference >= 0 else None
    return format_instruction(rng, task.intent, objects[task.target].name, reference, heldout)


def alternative_instruction(
    rng: np.random.Generator, task: Task, objects: list[ObjectSpec], heldout: bool
) -> tuple[str, int]:
    """Write a valid instruction that names a different object of the same scene.

    Returns:
        The instruction and the index of the object it names.
    """
    others = [i for i in range(len(objects)) if i != task.target]
    target = int(rng.choice(others))
    intent = str(rng.choice(["push_left", "push_right", "push_forward", "push_back", "lift"]))
    if len(others) > 1 and rng.random() < 0.3:
        intent = "next_to"
    reference = None
    if intent == "next_to":
        reference = objects[int(rng.choice([i for i in others if i != target]))].name
    return format_instruction(rng, intent, objects[target].name, reference, heldout), target


def hand_command(
    keyframes: tuple[Keyframe, ...], fraction: float
) -> tuple[np.ndarray, float, float]:
    """Ease between keyframes with a smoothstep, so the hand starts and stops gently.

    Args:
        keyframes: Keyframes in time order; the first has time 0.
        fraction: Time as a fraction of the horizon.

    Returns:
        Hand position (3,), yaw in radians and finger opening in metres.
    """
    if fraction <= keyframes[0].time:
        first = keyframes[0]
        return np.asarray(first.position), first.yaw, first.opening
    for start, end in itertools.pairwise(keyframes):
        if fraction <= end.time:
            s = (fraction - start.time) / max(end.time - start.time, 1e-9)
            s = s * s * (3.0 - 2.0 * s)
            position = (1 - s) * np.asarray(start.position) + s * np.asarray(end.position)
            yaw = (1 - s) * start.yaw + s * end.yaw
            opening = (1 - s) * start.opening + s * end.opening
            return position, yaw, opening
    last = keyframes[-1]
    return np.asarray(last.position), last.yaw, last.opening


def _plan_kind(
    rng: np.random.Generator,
    kind: str,
    target: int,
    objects: list[ObjectSpec],
    positions: np.ndarray,
) -> Task | None:
    if kind == "push":
        intents = list(PUSH_DIRECTIONS)
        rng.shuffle(intents)
        for intent in intents:
            direction = np.asarray(PUSH_DIRECTIONS[intent])
            keys = _push_keyframes(target, direction, PUSH_TRAVEL, objects, positions, skip=())
            if keys is not None:
                return Task(intent, target, -1, keys)
        return None

    if kind == "lift":
        keys = _lift_keyframes(target, objects, positions)
        return None if keys is None else Task("lift", target, -1, keys)

    references = [i for i in range(len(objects)) if i != target]
    rng.shuffle(references)
    for reference in references:
        offset = positions[reference] - positions[target]
        distance = float(np.linalg.norm(offset))
        spacing = objects[target].radius + objects[reference].radius + 0.02
        travel = distance - spacing + APPROACH_GAP
        if travel < 0.09:
            continue
        keys = _push_keyframes(
            target, offset / distance, travel, objects, positions, skip=(reference,)
        )
        if keys is not None:
            return Task("next_to", target, reference, keys)
    return None


def _push_keyframes(
    target: int,
    direction: np.ndarray,
    travel: float,
    objects: list[ObjectSpec],
    positions: np.ndarray,
    skip: tuple[int, ...],
) -> tuple[Keyframe, ...] | None:
    centre = positions[target]
    radius = objects[target].radius
    finger_depth = 2 * FINGER_HALF_SIZE[0]
    start = centre - direction * (radius + finger_depth + APPROACH_GAP)
    end = start + direction * travel
    object_end = centre + direction * (travel - APPROACH_GAP)
    if (np.abs(object_end) > REACH_HALF_SIZE).any():
        return None

    # The hand and the pushed object sweep the corridor from `start` to the object's end.
    sweep_width = max(radius, FINGER_HALF_SIZE[1])
    for i, spec in enumerate(objects):
        if i == target or i in skip:
            continue
        clearance = sweep_width + spec.radius + 0.012
        if _segment_distance(positions[i], start, object_end + direction * radius) < clearance:
            return None

    # The hand is symmetric under a half turn, so any yaw maps into (-pi/2, pi/2].
    yaw = _wrap_half_turn(math.atan2(direction[1], direction[0]))
    home = Keyframe(0.0, HAND_HOME, 0.0, 0.0)
    above = Keyframe(0.30, (*start, CRUISE_HEIGHT), yaw, 0.0)
    down = Keyframe(0.42, (*start, PUSH_HEIGHT), yaw, 0.0)
    pushed = Keyframe(0.92, (*end, PUSH_HEIGHT), yaw, 0.0)
    return (home, above, down, pushed)


def _lift_keyframes(
    target: int, objects: list[ObjectSpec], positions: np.ndarray
) -> tuple[Keyframe, ...] | None:
    centre = positions[target]
    spec = objects[target]
    yaw = _wrap_half_turn(spec.yaw)
    axis = np.array([math.cos(yaw), math.sin(yaw)])
    reach = GRASP_OPENING + 2 * FINGER_HALF_SIZE[0]
    for i, other in enumerate(objects):
        if i == target:
            continue
        for side in (-1.0, 1.0):
            finger = centre + side * reach * axis
            if np.linalg.norm(positions[i] - finger) < other.radius + FINGER_HALF_SIZE[1] + 0.01:
                return None

    grasp_height = max(spec.half_height, PUSH_HEIGHT)
    home = Keyframe(0.0, HAND_HOME, 0.0, 0.0)
    above = Keyframe(0.26, (*centre, CRUISE_HEIGHT), yaw, GRASP_OPENING)
    down = Keyframe(0.42, (*centre, grasp_height), yaw, GRASP_OPENING)
    closed = Keyframe(0.54, (*centre, grasp_height), yaw, 0.0)
    lifted = Keyframe(0.92, (*centre, grasp_height + LIFT_HEIGHT), yaw, 0.0)
    return (home, above, down, closed, lifted)


def _wrap_half_turn(angle: float) -> float:
    return angle - math.pi * math.floor((angle + math.pi / 2) / math.pi)


def _segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    segment = end - start
    s = float(np.clip(np.dot(point - start, segment) / max(np.dot(segment, segment), 1e-12), 0, 1))
    return float(np.linalg.norm(point - (start + s * segment)))
