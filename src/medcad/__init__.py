"""medcad: computer-aided diagnosis studies on endoscopy and ultrasound images."""

__version__ = "0.1.0"
