"""Stage 2, retrieval: which stored entries a turn remembers. VideoFOV overlap for cameras (``fov``,
``fov_retrieval``), segment descriptors and image embedders for long edits, the ``Selection`` they produce, and the
camera/coverage picture that explains a ranking (``preview``)."""

from .descriptors import SegmentDescriptor, describe_segment, select_segments
from .fov import FOVParams, fov_mask, fov_scores, retrieve
from .fov_retrieval import format_score_table, rank_bank_by_fov, select_by_fov
from .selection import SelectedMemory, Selection
