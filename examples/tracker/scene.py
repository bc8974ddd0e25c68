"""MJCF tabletop scene: a table, 3 to 5 coloured objects, a mocap-driven gripper and a camera.

World frame: z up, the table top at z = 0, x to the right and y away from the camera as seen in
the rendered image. All lengths are metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CAMERA_NAME",
    "COLORS",
    "FINGER_HALF_SIZE",
    "HAND_HOME",
    "HELDOUT_PAIRS",
    "SHAPES",
    "TABLE_HALF_SIZE",
    "ObjectSpec",
    "build_scene_xml",
    "sample_objects",
]

# Clearly separated hues, so that a 128x128 frame still distinguishes them.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.08, 0.08),
    "green": (0.10, 0.65, 0.15),
    "blue": (0.10, 0.25, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.55, 0.15, 0.75),
    "orange": (1.00, 0.50, 0.00),
}

SHAPES: tuple[str, ...] = ("cube", "cylinder", "ball", "block")

# Colour-shape pairs that never appear in training or validation scenes.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "ball"), ("green", "cylinder"), ("blue", "block"), ("yellow", "cube")}
)

TABLE_HALF_SIZE = (0.36, 0.26)
CAMERA_NAME = "overhead"
HAND_HOME = (0.0, 0.17, 0.15)
# Half sizes (x, y, z) of each finger plate; the fingers squeeze along the hand's local x.
FINGER_HALF_SIZE = (0.008, 0.022, 0.030)
FINGER_MAX_OPENING = 0.06

# Object placement area (centre coordinates) and the minimum distance between centres.
PLACE_HALF_SIZE = (0.20, 0.13)
MIN_SEPARATION = 0.095


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene.

    Attributes:
        color: Key of `COLORS`.
        shape: One of `SHAPES`.
        x: Centre x on the table in metres.
        y: Centre y on the table in metres.
        yaw: Rotation about the vertical axis in radians.
    """

    color: str
    shape: str
    x: float
    y: float
    yaw: float

    @property
    def half_height(self) -> float:
        """Height of the centre above the table top when the object rests on it."""
        return _SHAPE_GEOMETRY[self.shape][2]

    @property
    def radius(self) -> float:
        """Radius of the object's footprint circle, used for spacing and path checks."""
        return _SHAPE_GEOMETRY[self.shape][1]

    @property
    def name(self) -> str:
        """Colour and shape as an instruction names them, for example "red cube"."""
        return f"{self.color} {self.shape}"


# shape -> (MJCF geom type and size string, footprint radius, half height)
_SHAPE_GEOMETRY: dict[str, tuple[str, float, float]] = {
    "cube": ('type="box" size="0.026 0.026 0.026"', 0.037, 0.026),
    "cylinder": ('type="cylinder" size="0.025 0.032"', 0.025, 0.032),
    "ball": ('type="sphere" size="0.028"', 0.028, 0.028),
    "block": ('type="box" size="0.018 0.040 0.022"', 0.044, 0.022),
}


def sample_objects(
    rng: np.random.Generator,
    num_objects: int,
    allow_heldout_pairs: bool,
) -> list[ObjectSpec]:
    """Draw objects with distinct colours at random non-overlapping table positions.

    Args:
        rng: Random generator that makes the draw reproducible.
        num_objects: Number of objects, 1 to len(COLORS).
        allow_heldout_pairs: Whether colour-shape pairs of `HELDOUT_PAIRS` may appear.

    Returns:
        The objects, in the order that fixes their indices in the episode.

    Raises:
        ValueError: If `num_objects` is outside 1 to len(COLORS).
        RuntimeError: If no non-overlapping placement was found in 200 tries.
    """
    if not 1 <= num_objects <= len(COLORS):
        raise ValueError(
            f"num_objects must be between 1 and {len(COLORS)} so that colours stay distinct, "
            f"got {num_objects}"
        )

    colors = list(rng.choice(list(COLORS), size=num_objects, replace=False))
    shapes = []
    for color in colors:
        choices = [s for s in SHAPES if allow_heldout_pairs or (color, s) not in HELDOUT_PAIRS]
        shapes.append(str(rng.choice(choices)))

    for _ in range(200):
        xs = rng.uniform(-PLACE_HALF_SIZE[0], PLACE_HALF_SIZE[0], size=num_objects)
        ys = rng.uniform(-PLACE_HALF_SIZE[1], PLACE_HALF_SIZE[1], size=num_objects)
        points = np.stack([xs, ys], axis=1)
        gaps = np.linalg.norm(points[:, None] - points[None], axis=-1)
        np.fill_diagonal(gaps, np.inf)
        if gaps.min() >= MIN_SEPARATION:
            yaws = rng.uniform(-math.pi / 2, math.pi / 2, size=num_objects)
            return [
                ObjectSpec(str(c), s, float(x), float(y), float(w))
                for c, s, x, y, w in zip(colors, shapes, xs, ys, yaws, strict=True)
            ]
    raise RuntimeError(f"could not place {num_objects} objects without overlap in 200 tries")


def build_scene_xml(objects: list[ObjectSpec], image_size: int) -> str:
    """Write the MJCF model of one scene.

    Args:
        objects: Objects to place; body `obj{i}` contains object i.
        image_size: Side of the square offscreen buffer in pixels.

    Returns:
        The MJCF document as a string.
    """
    object_bodies = "\n".join(_object_body(i, spec) for i, spec in enumerate(objects))
    hx, hy = TABLE_HALF_SIZE
    fx, fy, fz = FINGER_HALF_SIZE
    home = " ".join(str(v) for v in HAND_HOME)
    # The gripper is a free body welded to a mocap target. A mocap body itself has no velocity
    # in the solver, so friction could never carry a grasped object along with it.
    buffer = max(image_size, 64)
    return f"""
<mujoco model="tabletop">
  <option timestep="0.002" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{buffer}" offheight="{buffer}"/>
    <quality shadowsize="1024"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
    <map znear="0.05" zfar="20"/>
  </visual>
  <default>
    <geom friction="0.9 0.01 0.002" condim="4" solref="0.004 1"/>
  </default>
  <worldbody>
    <light name="sun" pos="0.2 -0.3 1.5" dir="-0.1 0.2 -1" directional="true"
           diffuse="0.55 0.55 0.55" castshadow="true"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.22 0.22 0.25 1"/>
    <geom name="table" type="box" pos="0 0 -0.02" size="{hx} {hy} 0.02"
          rgba="0.78 0.76 0.72 1"/>
    <camera name="{CAMERA_NAME}" pos="0 -0.50 0.52" xyaxes="1 0 0 0 0.70 0.714" fovy="48"/>
{object_bodies}
    <body name="hand_target" mocap="true" pos="{home}"/>
    <body name="hand" pos="{home}" gravcomp="1">
      <freejoint name="hand"/>
      <geom name="wrist" type="cylinder" pos="0 0 0.085" size="0.013 0.035"
            rgba="0.30 0.30 0.33 1" contype="0" conaffinity="0"/>
      <geom name="palm" type="box" pos="0 0 0.042" size="0.075 0.026 0.010"
            rgba="0.30 0.30 0.33 1"/>
      <body name="finger_left" pos="{-fx} 0 0" gravcomp="1">
        <joint name="finger_left" type="slide" axis="-1 0 0" range="0 {FINGER_MAX_OPENING}"
               damping="2"/>
        <geom name="finger_left" type="box" size="{fx} {fy} {fz}" mass="0.03"
              rgba="0.88 0.88 0.90 1" friction="1.5 0.02 0.002"/>
      </body>
      <body name="finger_right" pos="{fx} 0 0" gravcomp="1">
        <joint name="finger_right" type="slide" axis="1 0 0" range="0 {FINGER_MAX_OPENING}"
               damping="2"/>
        <geom name="finger_right" type="box" size="{fx} {fy} {fz}" mass="0.03"
              rgba="0.88 0.88 0.90 1" friction="1.5 0.02 0.002"/>
      </body>
    </body>
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <equality>
    <weld name="hand_drive" body1="hand" body2="hand_target" solref="0.01 1"/>
  </equality>
  <actuator>
    <position name="finger_left" joint="finger_left" kp="250" ctrlrange="0 {FINGER_MAX_OPENING}"
              forcerange="-10 10"/>
    <position name="finger_right" joint="finger_right" kp="250"
              ctrlrange="0 {FINGER_MAX_OPENING}" forcerange="-10 10"/>
  </actuator>
</mujoco>
"""


def _object_body(index: int, spec: ObjectSpec) -> str:
    geom, _, half_height = _SHAPE_GEOMETRY[spec.shape]
    r, g, b = COLORS[spec.color]
    quat = f"{math.cos(spec.yaw / 2)} 0 0 {math.sin(spec.yaw / 2)}"
    # Rolling friction keeps a pushed ball from rolling on after the hand stops.
    extra = ' condim="6" friction="0.9 0.02 0.01"' if spec.shape == "ball" else ""
    return (
        f'    <body name="obj{index}" pos="{spec.x} {spec.y} {half_height + 0.0005}" '
        f'quat="{quat}">\n'
        f'      <freejoint name="obj{index}"/>\n'
        f'      <geom name="obj{index}" {geom} mass="0.08" rgba="{r} {g} {b} 1"{extra}/>\n'
        f"    </body>"
    )
