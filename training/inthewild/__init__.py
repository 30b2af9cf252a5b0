"""In-the-wild portraits: face detection, EG3D/PanoHead-framed crops and camera labels, offline (docs/inthewild.md)."""
