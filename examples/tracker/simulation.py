"""Simulate one tabletop episode in MuJoCo and measure tracks, visibility and hand poses.

Camera convention of the outputs (OpenCV): x right, y down, z forward, pixel coordinates with
the origin at the top-left corner of the image and pixel (i, j) covering [j, j+1) x [i, i+1).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .controller import Task, alternative_instruction, describe_task, hand_command, plan_task
from .scene import CAMERA_NAME, build_scene_xml, sample_objects

__all__ = ["simulate_episode"]

# MuJoCo cameras look along -z with y up; OpenCV cameras look along +z with y down.
_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])
SETTLE_SECONDS = 0.2
VISIBILITY_TOLERANCE = 0.012
POINT_SHARES = {"target": 0.25, "others": 0.25, "hand": 0.2}
TABLE_CATEGORY = -1
HAND_CATEGORY = -2


def simulate_episode(
    seed: int, split: str, config: Any, target: int | None = None
) -> dict[str, Any]:
    """Build a scene, run the scripted task and record the episode.

    Args:
        seed: Episode seed.
        split: "train", "val" or "heldout".
        config: An `EpisodeConfig`.
        target: Object index the task must move, or None to let the seed choose. The scene
            depends only on the seed while the first scene drawn allows a task on that
            object, so one seed with two targets gives the same initial scene with two
            instructions.

    Returns:
        {"arrays": ..., "attrs": ...} ready for `H5EpisodeWriter.write`.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    import mujoco

    rng = np.random.default_rng(seed)
    heldout = split == "heldout"
    model, data, objects, task = _build_episode(mujoco, rng, config, heldout, target)
    instruction = describe_task(rng, task, objects, heldout)
    alt_instruction, alt_target = alternative_instruction(rng, task, objects, heldout)

    # NOTE: a new Renderer (GL context and uploads) per episode is an estimated half of the
    # episode's CPU time; sharing one context per worker process would cut it.
    renderer = mujoco.Renderer(model, config.image_size, config.image_size)
    try:
        camera = _camera(model, data, config.image_size)
        rgb, depth, categories, bodies = _render_first_frame(mujoco, renderer, data, model, objects)
        points = _sample_points(rng, config.num_points, depth, categories, task.target, camera)
        anchors = _anchor_points(data, bodies, points)
        record = _run_task(mujoco, model, data, renderer, task, config, camera, anchors, bodies)
    finally:
        renderer.close()

    arrays = {
        "rgb": rgb,
        "depth": depth.astype(np.float16),
        "tracks": record["tracks"],
        "visibility": record["visibility"],
        "point_object": points["category"].astype(np.int64),
        "hand_uvd": record["hand_uvd"],
        "hand_rot6d": record["hand_rot6d"],
        "object_pos": record["object_pos"],
        "intrinsics": camera["K"].astype(np.float32),
        "extrinsics": camera["world_to_camera"].astype(np.float32),
    }
    attrs = {
        "instruction": instruction,
        "alt_instruction": alt_instruction,
        "alt_target_object": alt_target,
        "intent": task.intent,
        "target_object": task.target,
        "reference_object": task.reference,
        "object_names": [spec.name for spec in objects],
        "seed": seed,
    }
    return {"arrays": arrays, "attrs": attrs}


def _build_episode(
    mujoco: Any, rng: np.random.Generator, config: Any, heldout: bool, target: int | None
):
    for _ in range(100):
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        objects = sample_objects(rng, count, allow_heldout_pairs=heldout)
        model = mujoco.MjModel.from_xml_string(build_scene_xml(objects, config.image_size))
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        settle_steps = round(SETTLE_SECONDS / model.opt.timestep)
        mujoco.mj_step(model, data, nstep=settle_steps)

        positions = np.stack([data.body(f"obj{i}").xpos[:2] for i in range(count)])
        task = plan_task(rng, objects, positions, heldout, target)
        if task is not None:
            return model, data, objects, task
    raise RuntimeError("no feasible task found in 100 scenes; check the scene parameters")


def _camera(model: Any, data: Any, image_size: int) -> dict[str, np.ndarray]:
    camera_id = model.camera(CAMERA_NAME).id
    rotation = data.cam_xmat[camera_id].reshape(3, 3) @ _MUJOCO_TO_OPENCV
    position = data.cam_xpos[camera_id].copy()
    focal = 0.5 * image_size / math.tan(math.radians(model.cam_fovy[camera_id]) / 2)
    intrinsics = np.array(
        [[focal, 0.0, image_size / 2], [0.0, focal, image_size / 2], [0.0, 0.0, 1.0]]
    )
    world_to_camera = np.eye(4)
    world_to_camera[:3, :3] = rotation.T
    world_to_camera[:3, 3] = -rotation.T @ position
    return {"K": intrinsics, "world_to_camera": world_to_camera, "size": np.array(image_size)}


def _render_first_frame(mujoco: Any, renderer: Any, data: Any, model: Any, objects: list):
    renderer.update_scene(data, CAMERA_NAME)
    rgb = renderer.render().copy()

    renderer.enable_depth_rendering()
    renderer.update_scene(data, CAMERA_NAME)
    depth = renderer.render().copy()
    renderer.disable_depth_rendering()

    renderer.enable_segmentation_rendering()
    renderer.update_scene(data, CAMERA_NAME)
    segmentation = renderer.render().copy()
    renderer.disable_segmentation_rendering()

    # Map every geom to its category: object index, table, hand, or ignored (-3, the floor).
    geom_category = np.full(model.ngeom + 1, -3, dtype=np.int64)
    geom_body = np.zeros(model.ngeom + 1, dtype=np.int64)
    hand_bodies = {model.body(name).id for name in ("hand", "finger_left", "finger_right")}
    for geom_id in range(model.ngeom):
        body_id = int(model.geom_bodyid[geom_id])
        geom_body[geom_id] = body_id
        name = model.geom(geom_id).name
        if name == "table":
            geom_category[geom_id] = TABLE_CATEGORY
        elif body_id in hand_bodies:
            geom_category[geom_id] = HAND_CATEGORY
        elif name.startswith("obj"):
            geom_category[geom_id] = int(name[3:])

    ids = segmentation[..., 0].astype(np.int64)
    is_geom = (segmentation[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)) & (ids >= 0)
    ids = np.where(is_geom, ids, model.ngeom)
    categories = geom_category[ids]
    bodies = geom_body[ids]
    return rgb, depth, categories, bodies


def _sample_points(
    rng: np.random.Generator,
    num_points: int,
    depth: np.ndarray,
    categories: np.ndarray,
    target: int,
    camera: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    pools = {
        "target": np.flatnonzero(categories.ravel() == target),
        "others": np.flatnonzero((categories.ravel() >= 0) & (categories.ravel() != target)),
        "hand": np.flatnonzero(categories.ravel() == HAND_CATEGORY),
        "table": np.flatnonzero(categories.ravel() == TABLE_CATEGORY),
    }

    counts = {k: round(share * num_points) for k, share in POINT_SHARES.items()}
    counts["table"] = num_points - sum(counts.values())
    for key in ("target", "others", "hand"):
        if len(pools[key]) == 0:
            counts["table"] += counts[key]
            counts[key] = 0

    chosen = [
        rng.choice(pools[key], size=counts[key], replace=len(pools[key]) < counts[key])
        for key in ("target", "others", "hand", "table")
    ]
    flat = np.concatenate(chosen)
    rows, cols = np.divmod(flat, categories.shape[1])
    # A sub-pixel offset spreads points that share a pixel; depth is taken at that pixel.
    jitter = rng.uniform(-0.45, 0.45, size=(len(flat), 2))
    uv = np.stack([cols + 0.5, rows + 0.5], axis=1) + jitter
    z = depth[rows, cols].astype(np.float64)
    return {
        "uv": uv,
        "z": z,
        "category": categories[rows, cols],
        "pixel": flat,
        "world": _unproject(uv, z, camera),
    }


def _unproject(uv: np.ndarray, z: np.ndarray, camera: dict[str, np.ndarray]) -> np.ndarray:
    k = camera["K"]
    x = (uv[:, 0] - k[0, 2]) * z / k[0, 0]
    y = (uv[:, 1] - k[1, 2]) * z / k[1, 1]
    points_camera = np.stack([x, y, z], axis=1)
    world_to_camera = camera["world_to_camera"]
    rotation, translation = world_to_camera[:3, :3], world_to_camera[:3, 3]
    return (points_camera - translation) @ rotation


def _project(points: np.ndarray, camera: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    world_to_camera = camera["world_to_camera"]
    points_camera = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    z = points_camera[:, 2]
    k = camera["K"]
    u = k[0, 0] * points_camera[:, 0] / z + k[0, 2]
    v = k[1, 1] * points_camera[:, 1] / z + k[1, 2]
    return np.stack([u, v], axis=1), z


def _anchor_points(data: Any, bodies: np.ndarray, points: dict[str, np.ndarray]) -> dict:
    """Express each query point in the frame of the body it lies on."""
    body_ids = bodies.ravel()[points["pixel"]]
    positions = data.xpos[body_ids]
    rotations = data.xmat[body_ids].reshape(-1, 3, 3)
    local = np.einsum("nji,nj->ni", rotations, points["world"] - positions)
    return {"body": body_ids, "local": local}


def _points_world(data: Any, anchors: dict) -> np.ndarray:
    positions = data.xpos[anchors["body"]]
    rotations = data.xmat[anchors["body"]].reshape(-1, 3, 3)
    return positions + np.einsum("nij,nj->ni", rotations, anchors["local"])


def _run_task(
    mujoco: Any,
    model: Any,
    data: Any,
    renderer: Any,
    task: Task,
    config: Any,
    camera: dict[str, np.ndarray],
    anchors: dict,
    bodies: np.ndarray,
) -> dict[str, np.ndarray]:
    slots = config.num_steps + 1
    substeps = max(1, round(config.step_seconds / model.opt.timestep))
    total = config.num_steps * substeps
    hand_id = model.body("hand").id
    num_objects = sum(1 for i in range(model.nbody) if model.body(i).name.startswith("obj"))
    object_ids = [model.body(f"obj{i}").id for i in range(num_objects)]
    camera_rotation = camera["world_to_camera"][:3, :3]

    tracks = np.zeros((len(anchors["body"]), slots, 2), dtype=np.float32)
    visibility = np.zeros((len(anchors["body"]), slots), dtype=bool)
    hand_uvd = np.zeros((1, slots, 3), dtype=np.float32)
    hand_rot6d = np.zeros((1, slots, 6), dtype=np.float32)
    object_pos = np.zeros((num_objects, slots, 3), dtype=np.float32)

    renderer.enable_depth_rendering()
    step = 0
    for slot in range(slots):
        if slot > 0:
            for _ in range(substeps):
                step += 1
                _apply_command(data, task, step / total)
                mujoco.mj_step(model, data)
        else:
            _apply_command(data, task, 0.0)
            mujoco.mj_forward(model, data)

        renderer.update_scene(data, CAMERA_NAME)
        depth = renderer.render()
        uv, z = _project(_points_world(data, anchors), camera)
        tracks[:, slot] = uv
        visibility[:, slot] = _visible(uv, z, depth)

        hand_uv, hand_z = _project(data.xpos[hand_id][None], camera)
        hand_uvd[0, slot] = (*hand_uv[0], hand_z[0])
        rotation = camera_rotation @ data.xmat[hand_id].reshape(3, 3)
        hand_rot6d[0, slot] = np.concatenate([rotation[:, 0], rotation[:, 1]])
        object_pos[:, slot] = data.xpos[object_ids]
    renderer.disable_depth_rendering()

    return {
        "tracks": tracks,
        "visibility": visibility,
        "hand_uvd": hand_uvd,
        "hand_rot6d": hand_rot6d,
        "object_pos": object_pos,
    }


def _apply_command(data: Any, task: Task, fraction: float) -> None:
    position, yaw, opening = hand_command(task.keyframes, fraction)
    data.mocap_pos[0] = position
    data.mocap_quat[0] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
    data.ctrl[:] = opening


def _visible(uv: np.ndarray, z: np.ndarray, depth: np.ndarray) -> np.ndarray:
    height, width = depth.shape
    cols = np.floor(uv[:, 0]).astype(np.int64)
    rows = np.floor(uv[:, 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height) & (z > 0)
    surface = depth[np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)]
    return inside & (z <= surface + VISIBILITY_TOLERANCE)
