"""Camera trajectories: the ``Trajectory`` type (OpenCV axes), file formats, and the ReCamMaster presets."""

from .files import CameraFileError, load_recammaster, load_trajectory
from .presets import PRESET_NAMES, preset_trajectory
from .trajectory import Trajectory, latent_frame_count, recammaster_embedding
