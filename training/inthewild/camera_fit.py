"""Head pose from five landmarks, and the camera labels EG3D and PanoHead derive from a head pose.

Frames (docs/inthewild.md, docs/cameras.md):

- The 3D template and the head pose live in Deep3DFaceRecon's (D3D's) frame: BFM units (1 = 1 dm), y up, the face
  toward +z. A head pose (R, t) maps template points X to ``p = R X + t``; D3D's camera sits at z = 10 on the z axis and
  looks along -z (OpenGL axes), with focal length ``FFHQ_FOCAL`` in units of the crop size and its principal point at
  the crop centre. That is the camera the EG3D crop implies (2985.29 px / 700 px = 4.2647).
- Crop coordinates are normalised by the crop size: (0, 0) is the top-left corner, (1, 1) the bottom-right, y down.
- Labels follow training/cameras.py: 25 float64 numbers, an OpenCV cam2world 4x4 then normalised intrinsics.

``eg3d_label`` is EG3D's conversion of a D3D pose into its FFHQ labels (world = 0.27 BFM + (0, 0.006, 0.161), camera
moved radially onto the sphere of radius 2.7 about the world origin); ``look_at_origin_label`` is PanoHead's (camera on
its backward axis at distance 2.7 from the origin, translation dropped). Both keep the rotation: the head rotation is
``R = diag(1, -1, -1) c2w_rot^T`` for either label.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
from scipy.spatial.transform import Rotation

from dnnlib import UserError
from training.cameras import DEFAULT_RADIUS, FFHQ_FOCAL, encode_label, intrinsics_from_focal, label_yaw_pitch_roll

D3D_CAMERA_DISTANCE = 10.0  # D3D's camera centre on the z axis, BFM units
BFM_TO_WORLD_SCALE = 0.27  # EG3D world units per BFM unit (its "normalize camera radius" step)
BFM_TO_WORLD_OFFSET = (0.0, 0.006, 0.161)  # EG3D's offset of the BFM origin in its world frame
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])  # flips camera y and z: OpenGL (y up, looking along -z) to OpenCV axes


def project_template(
    template: np.ndarray, rotation: np.ndarray, translation: np.ndarray, focal: float = FFHQ_FOCAL
) -> np.ndarray:
    """Projects template points under D3D's camera into normalised crop coordinates.

    Args:
        template: [N, 3] points, D3D frame (BFM units, y up).
        rotation: [3, 3] head rotation R; translation: [3] head translation t (p = R X + t).
        focal: focal length in units of the crop size.
    Returns:
        [N, 2] positions (x right, y down) in units of the crop size; the principal point is (0.5, 0.5).
    """
    p = template @ rotation.T + translation
    depth = D3D_CAMERA_DISTANCE - p[:, 2]
    return np.stack([0.5 + focal * p[:, 0] / depth, 0.5 - focal * p[:, 1] / depth], axis=1)


def fit_head_pose(points: np.ndarray, template: np.ndarray, focal: float = FFHQ_FOCAL) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares head pose (6 DoF) that projects ``template`` onto ``points`` under D3D's camera.

    Starts from R = I, t = 0 (a frontal head at the template origin) and minimises the squared reprojection error with
    the rotation as a rotation vector.

    Args:
        points: [N, 2] observed positions in normalised crop coordinates (see ``project_template``).
        template: [N, 3] corresponding template points, D3D frame.
    Returns:
        (R [3, 3], t [3]) float64.
    """
    points = np.asarray(points, dtype=np.float64)
    template = np.asarray(template, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or template.shape != (len(points), 3):
        raise UserError(
            f"fit_head_pose: expected points [N, 2] and template [N, 3], got {points.shape} and {template.shape}"
        )

    def residuals(params: np.ndarray) -> np.ndarray:
        rotation = Rotation.from_rotvec(params[:3]).as_matrix()
        return (project_template(template, rotation, params[3:], focal) - points).ravel()

    result = scipy.optimize.least_squares(residuals, np.zeros(6), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return Rotation.from_rotvec(result.x[:3]).as_matrix(), result.x[3:].copy()


def _label(cam2world_rotation: np.ndarray, position: np.ndarray) -> np.ndarray:
    """25-float label from an OpenCV cam2world rotation [3, 3] and camera centre [3], FFHQ intrinsics."""
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.from_numpy(cam2world_rotation)
    c2w[:3, 3] = torch.from_numpy(position)
    return encode_label(c2w, intrinsics_from_focal(FFHQ_FOCAL, dtype=torch.float64)).numpy()


def eg3d_label(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """EG3D's FFHQ label [25] of a D3D head pose (R [3, 3], t [3], BFM units).

    The chain: the camera centre in the head's frame is ``c = -R^T (t - (0, 0, 10))`` with cam2world rotation
    ``R^T diag(1, -1, -1)``; then ``c <- 0.27 c + (0, 0.006, 0.161)`` and ``c <- 2.7 c / |c|`` (the rotation is kept).
    The frontal pose R = I, t = 0 gives the camera at (0, 0.0057, 2.7) with rotation diag(1, -1, -1).
    """
    centre = -rotation.T @ (np.asarray(translation, dtype=np.float64) - np.array([0.0, 0.0, D3D_CAMERA_DISTANCE]))
    centre = BFM_TO_WORLD_SCALE * centre + np.asarray(BFM_TO_WORLD_OFFSET)
    centre = DEFAULT_RADIUS * centre / np.linalg.norm(centre)
    return _label(rotation.T @ _GL_TO_CV, centre)


def look_at_origin_label(rotation: np.ndarray) -> np.ndarray:
    """PanoHead's label [25] of a head rotation R [3, 3]: the camera at distance 2.7 from the world origin on its own
    backward axis (so it looks at the origin), cam2world rotation ``R^T diag(1, -1, -1)``, FFHQ intrinsics."""
    return _label(rotation.T @ _GL_TO_CV, DEFAULT_RADIUS * rotation.T[:, 2])


def yaw_pitch_roll_deg(label: np.ndarray) -> np.ndarray:
    """Geometric (yaw, pitch, roll) [3] in degrees of a label [25] (``training.cameras.label_yaw_pitch_roll``)."""
    angles = label_yaw_pitch_roll(torch.as_tensor(np.asarray(label, dtype=np.float64)))
    return np.degrees(angles.numpy())
